"""The fVLM model library: image / text towers, anatomy pooling, losses, DDP gathers, zero-shot scoring.

Imports nothing from :mod:`training.trainer`, :mod:`training.evaluation` or :mod:`training.inference`.
"""
