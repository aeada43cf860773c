"""Prediction: a new study -> per-anatomy, per-label zero-shot probabilities (JSON).

Input is a DICOM directory (converted with the preprocessing library) or a NIfTI HU volume; the
anatomy mask comes from ``--mask`` (TotalSegmentator ``total`` ids on the volume's grid) or the
segmentation library's TotalSegmentator backend. Both are brought to the model grid (resample to
``grid.spacing_zyx_mm``, crop around the anatomies; segmentation ``prepare_model_grid`` when present),
windowed to [0, 1] with the model's ``hu_window`` and scored with the model's zero-shot prompt pairs.

Arrays handed to the model are (z, y, x); NIfTI arrays on disk are (x, y, z) in RAS+ and are transposed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.models.zero_shot import (
    ZeroShotModel,
    embed_arrays,
    load_zero_shot_model,
    zero_shot_probabilities,
)

if TYPE_CHECKING:
    from core.config import FvlmConfig

log = logging.getLogger(__name__)


class PredictionError(RuntimeError):
    """A study that cannot be predicted; the message names the input and the reason (no PHI)."""


def window_hu(hu_zyx: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    low, high = float(hu_window[0]), float(hu_window[1])
    return ((np.clip(hu_zyx.astype(np.float32), low, high) - low) / (high - low)).astype(np.float32)


def center_crop_or_pad(
    array: np.ndarray, size_zyx: tuple[int, int, int], fill: float, center: tuple[int, int, int] | None = None
) -> np.ndarray:
    """Crop (around ``center``, default the array centre) / pad with ``fill`` to exactly ``size_zyx``."""
    out = np.full(size_zyx, fill, dtype=array.dtype)
    src_slices, dst_slices = [], []
    for axis, size in enumerate(size_zyx):
        length = array.shape[axis]
        middle = length // 2 if center is None else int(center[axis])
        start = middle - size // 2
        start = max(0, min(start, length - size)) if length >= size else start
        src_start, src_end = max(0, start), min(length, start + size)
        dst_start = src_start - start
        src_slices.append(slice(src_start, src_end))
        dst_slices.append(slice(dst_start, dst_start + (src_end - src_start)))
    out[tuple(dst_slices)] = array[tuple(src_slices)]
    return out


def predict_prepared(bundle: ZeroShotModel, hu_zyx: np.ndarray, anatomy_mask_zyx: np.ndarray) -> dict[str, Any]:
    """Score one study already on the model grid: HU (z,y,x) and anatomy-index mask (z,y,x), 0..K.

    The crop is centred on the union of the anatomies (padded with air when smaller than the crop).
    """
    crop = bundle.crop_zyx
    hu_window = tuple(bundle.meta.get("hu_window", (-1150.0, 350.0)))
    found = np.argwhere(anatomy_mask_zyx > 0)
    center = tuple(((found.min(0) + found.max(0)) // 2).tolist()) if found.size else None
    volume = center_crop_or_pad(window_hu(hu_zyx, hu_window), crop, 0.0, center)
    mask = center_crop_or_pad(anatomy_mask_zyx.astype(np.uint8), crop, 0, center)
    embeddings = embed_arrays(bundle, volume[None, None], mask[None])
    probabilities, used_global = zero_shot_probabilities(embeddings, bundle.prompt_emb, bundle.spec, bundle.logit_scale)
    spec = bundle.spec
    anatomies: dict[str, Any] = {}
    for k, name in enumerate(spec.anatomy_names):
        voxels = int((anatomy_mask_zyx == k + 1).sum())
        anatomies[name] = {
            "found": bool(embeddings.present[0, k]),
            "voxels_on_model_grid": voxels,
            "labels": {},
        }
    for s, label in enumerate(spec.labels):
        anatomy = spec.anatomy_names[spec.anatomy_index[s]]
        anatomies[anatomy]["labels"][label] = {
            "probability": round(float(probabilities[0, s]), 6),
            "scored_on": "global" if used_global[0, s] else "anatomy",
        }
    return {
        "anatomy_set": spec.anatomy_set,
        "anatomies_found": [name for name in spec.anatomy_names if anatomies[name]["found"]],
        "anatomies": anatomies,
        "labels": {label: round(float(probabilities[0, s]), 6) for s, label in enumerate(spec.labels)},
        "model_grid": {
            "crop_zyx": list(crop),
            "spacing_zyx_mm": bundle.meta.get("spacing_zyx_mm"),
            "hu_window": list(hu_window),
        },
    }


def write_prediction(payload: dict[str, Any], out_path: str | Path) -> Path:
    from core.io import atomic_write_text

    target = Path(out_path)
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    return target


# ------------------------------------------------------------------------------------ the stage
def load_input_image(input_path: str | Path, config: FvlmConfig, work_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """A RAS+ nibabel HU image for a NIfTI file or a DICOM directory holding exactly one study.

    DICOM goes through the preprocessing library (series selection, HU, geometry, de-identification);
    the returned info carries the pseudonymous ``study_id`` only (no header values).
    """
    import nibabel as nib

    source = Path(input_path)
    if not source.exists():
        raise PredictionError(f"{source}: no such file or directory")
    if source.is_file():
        if not source.name.endswith((".nii", ".nii.gz")):
            raise PredictionError(f"{source}: not a NIfTI file (.nii / .nii.gz) nor a DICOM directory")
        try:
            image = nib.load(str(source))
            image = nib.as_closest_canonical(image)
        except Exception as error:  # noqa: BLE001 - any reader failure is "cannot read this study"
            raise PredictionError(f"{source}: cannot read NIfTI ({type(error).__name__}: {error})") from None
        if len(image.shape) != 3:
            raise PredictionError(f"{source}: expected a 3D volume, got shape {tuple(image.shape)}")
        return image, {"input_kind": "nifti"}
    from preprocessing.convert import ConvertSettings, convert_study
    from preprocessing.dicom_discovery import discover_studies

    studies = discover_studies(source, study_key_tag=config.convert.study_key_tag)
    if not studies:
        raise PredictionError(f"{source}: no readable DICOM study found")
    if len(studies) > 1:
        raise PredictionError(f"{source}: holds {len(studies)} studies; pass the folder of one study")
    settings = ConvertSettings(
        salt=config.privacy.salt,
        strict=config.convert.strict,
        series_preference=tuple(config.convert.series_preference),
        min_slices=config.convert.min_slices,
        max_spacing_deviation=config.convert.max_spacing_deviation,
        output_extension=".nii.gz",
        study_key_tag=config.convert.study_key_tag,
        pseudonym_length=config.privacy.pseudonym_length,
    )
    row = convert_study(studies[0], work_dir, settings)
    if row.status != "ok" or not row.volume_path:
        raise PredictionError(f"{source}: cannot convert study {row.study_id}: {row.reason}")
    image = nib.load(str(Path(work_dir) / row.volume_path))
    return image, {
        "input_kind": "dicom",
        "study_id": row.study_id,
        "warnings": list(row.warnings),
        "series_description": row.series_description,
    }


def load_or_segment_mask(image: Any, mask_path: str | Path | None, config: FvlmConfig, anatomy_set_name: str) -> Any:
    """TotalSegmentator ``total`` ids (x, y, z) on the image's grid: from ``mask_path`` or the backend."""
    import nibabel as nib
    import numpy as np

    if mask_path is not None:
        source = Path(mask_path)
        try:
            mask_image = nib.as_closest_canonical(nib.load(str(source)))
        except Exception as error:  # noqa: BLE001
            raise PredictionError(f"{source}: cannot read mask ({type(error).__name__}: {error})") from None
        if tuple(mask_image.shape) != tuple(image.shape):
            raise PredictionError(
                f"{source}: mask shape {tuple(mask_image.shape)} differs from the volume's "
                f"{tuple(image.shape)} (masks must be on the volume's grid)"
            )
        if not np.allclose(mask_image.affine, image.affine, atol=1e-3):
            raise PredictionError(f"{source}: mask affine differs from the volume's (not the same grid)")
        return np.asarray(mask_image.dataobj).astype(np.uint8)
    from core.anatomy_sets import load_anatomy_set
    from segmentation.totalseg import TotalSegmentatorBackend

    classes = sorted({c for anatomy in load_anatomy_set(anatomy_set_name).anatomies for c in anatomy.classes})
    backend = TotalSegmentatorBackend(
        mode=config.segment.mode,
        device=config.segment.device,
        roi_subset=classes if config.segment.roi_subset else None,
        home_dir=config.path(config.segment.totalseg_home) if config.segment.totalseg_home else None,
    )
    try:
        return backend.segment(image)
    except Exception as error:  # noqa: BLE001 - weights missing, nnU-Net failure, ...
        raise PredictionError(
            f"segmentation failed ({type(error).__name__}: {error}); pass --mask with a "
            f"precomputed TotalSegmentator mask or install the weights"
        ) from None
    finally:
        backend.close()


def predict_study(
    config: FvlmConfig,
    model_ref: str | Path,
    input_path: str | Path,
    *,
    mask_path: str | Path | None = None,
    work_dir: str | Path,
) -> dict[str, Any]:
    """DICOM dir / NIfTI (+ mask) -> prediction payload (per-anatomy, per-label probabilities)."""
    from segmentation.model_grid import EmptyRoiError, prepare_model_grid
    from training.evaluation import tracking

    for name, given in (("input", input_path), ("mask", mask_path)):  # fail fast, before any model download
        if given is not None and not Path(given).exists():
            raise PredictionError(f"{given}: no such file or directory ({name})")
    tracking_uri = tracking.tracking_uri_for(config.root, config.tracking.mlflow_tracking_uri)
    try:
        model_dir = tracking.resolve_model_dir(model_ref, tracking_uri, Path(work_dir) / "model")
    except Exception as error:  # noqa: BLE001 - unknown alias, missing dir, ...
        raise PredictionError(f"model {model_ref}: cannot load ({type(error).__name__}: {error})") from None
    bundle = load_zero_shot_model(model_dir)
    image, info = load_input_image(input_path, config, Path(work_dir) / "converted")
    ids = load_or_segment_mask(image, mask_path, config, bundle.spec.anatomy_set)
    spacing = tuple(bundle.meta.get("spacing_zyx_mm") or config.grid.spacing_zyx_mm)
    try:
        grid = prepare_model_grid(
            image, ids, bundle.spec.anatomy_set, spacing, config.grid.roi_margin_slices, config.grid.roi_margin_voxels
        )
    except EmptyRoiError as error:
        raise PredictionError(f"{input_path}: {error}") from None
    payload = predict_prepared(bundle, np.asarray(grid.hu_zyx), np.asarray(grid.anatomy_index_zyx))
    payload = {"model": str(model_ref), **info, **payload}
    return payload
