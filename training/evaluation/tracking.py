"""Import alias kept for MLflow models logged before the MLflow code moved to :mod:`training.tracking`.

A logged fVLM pyfunc is models-from-code: MLflow stores a copy of ``pyfunc_model.py`` in the model and
runs it on load. Copies logged before the move import ``MODEL_DIR_ARTIFACT`` from this module, and
nothing else of the project besides :mod:`training.models.zero_shot`. New code imports
:mod:`training.tracking.registry`.
"""

from training.tracking.registry import MODEL_DIR_ARTIFACT

__all__ = ["MODEL_DIR_ARTIFACT"]
