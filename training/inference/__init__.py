"""Prediction: a new DICOM / NIfTI study -> per-anatomy, per-label zero-shot probabilities (``predict``)."""
