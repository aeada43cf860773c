"""The fVLM zero-shot pyfunc as MLflow *models-from-code*: :func:`training.tracking.registry.log_model`
logs this file's path, MLflow copies the file into the logged model and executes it when the model is
logged and loaded. Nothing is pickled: the model is this code plus plain-file artifacts (the
``FVLM.save_pretrained`` directory: JSON config, a torch state dict read with ``weights_only=True``,
tokenizer JSON files, ``zero_shot.json``).

The package never imports this module (it calls :func:`mlflow.models.set_model` when run).

Input: one float32 array ``(B, 2, Z, Y, X)``, channel 0 the volume in [0, 1] on the model grid, channel 1
the anatomy mask ids (0..K, whole numbers); build it with
:func:`training.tracking.registry.pyfunc_input`. Output: a DataFrame of zero-shot positive-class
probabilities, one column per scored label.
"""

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext


class FvlmZeroShotPyfunc(PythonModel):
    """Zero-shot per-label probabilities from a stacked (volume, mask) array on the model grid."""

    def load_context(self, context: PythonModelContext) -> None:
        from training.models.zero_shot import load_zero_shot_model
        from training.tracking.registry import MODEL_DIR_ARTIFACT

        self.bundle = load_zero_shot_model(context.artifacts[MODEL_DIR_ARTIFACT])

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from training.models.zero_shot import predict_arrays

        stacked = np.asarray(model_input)
        if stacked.ndim != 5 or stacked.shape[1] != 2:
            raise ValueError(
                f"model input must be (B, 2, Z, Y, X) = volume and mask stacked on axis 1, got {stacked.shape}"
            )
        volume = stacked[:, :1].astype(np.float32, copy=False)
        mask = np.rint(stacked[:, 1]).astype(np.uint8)
        probabilities = predict_arrays(self.bundle, volume, mask)
        return pd.DataFrame(probabilities, columns=list(self.bundle.spec.labels))


set_model(FvlmZeroShotPyfunc())
