"""The logged MLflow model and the model registry: pyfunc logging from code, registration, and
model URIs resolved to a local model directory or a registered version.

The logged model is an MLflow *pyfunc* logged from code (:mod:`training.tracking.pyfunc_model`, nothing
pickled) wrapping the ``FVLM.save_pretrained`` directory (artifact ``model_dir``, with ``zero_shot.json``:
labels, anatomy index, prompt pairs): ``predict(pyfunc_input(volume, mask))`` (one float32 array
(B, 2, Z, Y, X)) returns a DataFrame of zero-shot positive-class probabilities, one column per scored
label. ``resolve_model_dir`` turns ``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model`` or a
local directory into that directory for evaluate/predict.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.tracking.runs import MlflowTracker, NullTracker

MODEL_ARTIFACT_PATH = "model"
MODEL_DIR_ARTIFACT = "model_dir"
MODEL_CONFIG_FILE = "fvlm_config.json"  # training.models.model.CONFIG_FILE (not imported: keeps this light)
# pip requirements of the logged pyfunc: passing them skips MLflow's slow dependency inference (shared/docs/ENV.md)
PYFUNC_PIP_REQUIREMENTS = ("torch", "numpy", "pandas", "transformers", "tokenizers", "mlflow")


PYFUNC_CODE_FILE = Path(__file__).with_name("pyfunc_model.py")  # models-from-code: logged as code, never pickled


def pyfunc_input(volume: Any, mask: Any) -> Any:
    """The logged pyfunc's input: volume (B,1,Z,Y,X) or (B,Z,Y,X) in [0, 1] and mask (B,Z,Y,X) 0..K stacked
    into one float32 array (B, 2, Z, Y, X) (channel 0 volume, channel 1 mask ids)."""
    import numpy as np

    volume_array = np.asarray(volume, dtype=np.float32)
    if volume_array.ndim == 4:
        volume_array = volume_array[:, None]
    mask_array = np.asarray(mask).astype(np.float32)[:, None]
    if volume_array.ndim != 5 or volume_array.shape[1] != 1 or mask_array.shape[2:] != volume_array.shape[2:]:
        raise ValueError(f"volume {volume_array.shape} and mask {mask_array.shape[:1] + mask_array.shape[2:]} differ")
    return np.concatenate([volume_array, mask_array], axis=1)


def log_model(
    tracker: NullTracker,
    model_dir: str | Path,
    *,
    crop_zyx: tuple[int, int, int],
    labels: tuple[str, ...],
    example_zyx: tuple[int, int, int] | None = None,
) -> str | None:
    """Log the model directory as a pyfunc in the tracker's run; returns the model URI (None: no tracking).

    Models-from-code (:mod:`training.tracking.pyfunc_model`, typed ``predict``): the logged model holds
    that code file and the model directory as plain-file artifacts, no pickled Python object."""
    if not isinstance(tracker, MlflowTracker):
        return None
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    mlflow.set_tracking_uri(tracker.tracking_uri)
    signature = ModelSignature(
        # (B, 2, Z, Y, X): volume and mask stacked (pyfunc_input); spatial dims free: the model
        # interpolates its position embeddings to other grids; the training grid (z, y, x) = crop_zyx is
        # recorded in the model dir's fvlm_config.json
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2, -1, -1, -1))]),
        outputs=Schema([ColSpec("double", label) for label in labels]),
    )
    ez, ey, ex = example_zyx or crop_zyx
    example = np.zeros((1, 2, ez, ey, ex), dtype=np.float32)
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH,
            python_model=str(PYFUNC_CODE_FILE),
            artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
            signature=signature,
            input_example=example if example_zyx else None,
            pip_requirements=list(PYFUNC_PIP_REQUIREMENTS),
        )
    return info.model_uri


def register_model(tracking_uri: str, model_uri: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """Register ``model_uri`` as a new version of ``name``; returns the version (string)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(model_uri, name, tags=dict(tags or {}))
    return str(version.version)


def resolve_model_dir(
    model: str | Path, tracking_uri: str | None = None, download_root: str | Path | None = None
) -> Path:
    """A local ``FVLM.save_pretrained`` directory for a local path or an MLflow model URI.

    Accepted: a save_pretrained dir; a training output dir (uses ``<dir>/model``); ``models:/...``,
    ``runs:/...`` or any MLflow artifact URI of a logged pyfunc (its ``model_dir`` artifact is downloaded).
    """
    text = str(model)
    if "://" not in text and not text.startswith(("models:", "runs:")):
        local = Path(text)
        if (local / "model").is_dir() and not (local / MODEL_CONFIG_FILE).is_file():
            local = local / "model"
        if not local.is_dir():
            raise FileNotFoundError(f"{local}: no such model directory")
        return local
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    target = None if download_root is None else str(download_root)
    if target is not None:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
        target = str(Path(target) / safe)
        Path(target).mkdir(parents=True, exist_ok=True)
    local_root = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=target))
    # pyfunc artifacts keep the logged folder's own name under artifacts/ (training logs "model")
    found = sorted(local_root.rglob(MODEL_CONFIG_FILE))
    if not found:
        raise FileNotFoundError(f"{text}: the logged model holds no fVLM model directory ({MODEL_CONFIG_FILE})")
    return found[0].parent


def model_version_for_uri(tracking_uri: str, model_uri: str) -> tuple[str, str] | None:
    """(name, version) for ``models:/name/N`` or ``models:/name@alias``; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    body = model_uri[len("models:/") :]
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = body.partition("/")
    return name, version


def resolve_model_version(tracking_uri: str, model_uri: str) -> dict[str, str | None] | None:
    """``models:/name@alias`` / ``models:/name/N`` -> {"name", "version", "alias", "run_id"}; None otherwise.

    The alias is resolved once (``get_model_version_by_alias``): whoever then reads the model and its
    thresholds reads that version, even if the alias moves meanwhile.
    """
    if not model_uri.startswith("models:/"):
        return None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    body = model_uri[len("models:/") :]
    if "@" in body:
        name, alias = body.split("@", 1)
        found = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = body.partition("/")
        alias = None
        found = client.get_model_version(name, number)
    from training.tracking.gate import EVIDENCE_TAG, PROMOTED_TAG

    return {
        "name": name,
        "version": str(found.version),
        "alias": alias,
        "run_id": found.run_id,
        "evidence": (found.tags or {}).get(EVIDENCE_TAG),  # None: evaluated before the evidence check
        "promoted": (found.tags or {}).get(PROMOTED_TAG),
    }
