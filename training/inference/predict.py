"""Prediction: a new study -> per-anatomy, per-label calls (JSON, schema in docs/predict.md).

Input is a DICOM directory (converted with the preprocessing library), a NIfTI HU volume, or a study
of the converted manifest (``study_id``). The anatomy mask comes from ``--mask`` (TotalSegmentator
``total`` ids on the volume's grid), else is found from the study's identity (the segment stage's
``<paths.segmented>/masks/<study_id>.nii.gz``, then ``paths.precomputed_masks`` keyed by study_id or
by the raw key, e.g. the StudyInstanceUID), else the TotalSegmentator backend when
``segment.backend: totalsegmentator``. Volume and mask are brought to the model grid, windowed with
the model's ``hu_window`` and scored with its zero-shot prompt pairs.

Each label gets its probability, the decision threshold chosen on the validation split when the
model version was evaluated (model version tags, :func:`training.evaluation.tracking.read_thresholds`),
the call (positive / negative) and the label's validation AUC. An anatomy absent from the scan is
``not_assessable``: its labels get no probability. ``models:/name@alias`` is resolved to one version
first; model and thresholds are read from that version.

Arrays handed to the model are (z, y, x); NIfTI arrays on disk are (x, y, z) in RAS+ and are transposed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.models.zero_shot import (
    ZeroShotModel,
    load_zero_shot_model,
    zero_shot_probabilities,
)

if TYPE_CHECKING:
    from core.config import FvlmConfig

log = logging.getLogger(__name__)

PREDICTION_SCHEMA_VERSION = 1
PREDICTION_SCHEMA_FILE = Path(__file__).with_name("prediction.schema.json")


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


def evaluation_crops(
    hu_zyx: np.ndarray,
    index_zyx: np.ndarray,
    crop_zyx: tuple[int, int, int],
    hu_window: tuple[float, float],
    n_anatomies: int,
    eval_mode: str = "anatomy",
) -> list[dict[str, Any]]:
    """The crops ``fvlm evaluate`` scores for this study, made by the same code (the shard reader's
    eval transform, :class:`training.trainer.data.ShardDataset`): ``"anatomy"`` one crop centred on each
    anatomy present (``crop_anatomy = k``), ``"center"`` one crop centred on the union of the anatomies.
    The thresholds were chosen on probabilities computed this way, so predict computes them this way."""
    from training.trainer.data import ShardDataset

    reader = ShardDataset([], crop_zyx=crop_zyx, hu_window=hu_window, mode="eval", eval_mode=eval_mode)  # type: ignore[arg-type]
    row = {
        "study_id": "study",
        "hu_volume": hu_zyx,
        "anatomy_mask": index_zyx.astype(np.uint8),
        "anatomy_text": [""] * n_anatomies,
        "anatomy_abnormal": np.zeros(n_anatomies, dtype=bool),
        "labels": np.full(18, -1, dtype=np.int8),
        "report_text": "",
    }
    return list(reader.transform(row, np.random.default_rng(0)))  # eval mode: no randomness used


def score_crops(bundle: ZeroShotModel, crops: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The one place predict uses the loaded model: (S,) probabilities and (K,) anatomy present flags of
    one study from its :func:`evaluation_crops` (anatomy k's embedding from the crop centred on k, as
    :func:`training.models.zero_shot.embed_batches` does for evaluation)."""
    from training.models.zero_shot import embed_batches
    from training.trainer.batch import collate_batch

    embeddings = embed_batches(bundle.model, [collate_batch(crops)])
    probabilities, _ = zero_shot_probabilities(embeddings, bundle.prompt_emb, bundle.spec, bundle.logit_scale)
    return np.asarray(probabilities[0], dtype=np.float64), np.asarray(embeddings.present[0], dtype=bool)


def label_decision(probability: float | None, entry: dict[str, Any] | None, thresholds_known: bool) -> dict[str, Any]:
    """Probability, threshold, call and val AUC of one label (``entry``: its thresholds.json row)."""
    out: dict[str, Any] = {
        "probability": None if probability is None else round(float(probability), 6),
        "threshold": None,
        "call": None,
        "val_auc": None,
    }
    if entry is not None:
        out["threshold"] = round(float(entry["threshold"]), 6)
        out["val_auc"] = None if entry.get("val_auc") is None else round(float(entry["val_auc"]), 6)
        if probability is not None:
            out["call"] = "positive" if float(probability) >= float(entry["threshold"]) else "negative"
    elif probability is not None:
        out["reason"] = (
            "no threshold for this label (its validation split had a single class)"
            if thresholds_known
            else "the model version has no stored thresholds"
        )
    return out


def predict_prepared(
    bundle: ZeroShotModel,
    hu_zyx: np.ndarray,
    anatomy_mask_zyx: np.ndarray,
    thresholds: dict[str, Any] | None = None,
    eval_mode: str = "anatomy",
) -> dict[str, Any]:
    """Score one study already on the model grid: HU (z,y,x) and anatomy-index mask (z,y,x), 0..K.

    ``thresholds``: label -> thresholds.json entry (None: none stored, probabilities without calls).
    The crops are the ones evaluation scored (``eval_mode``, :func:`evaluation_crops`). An anatomy the
    model does not see is ``not_assessable``: no probability, no call.
    """
    crop = bundle.crop_zyx
    hu_window = tuple(bundle.meta.get("hu_window", (-1150.0, 350.0)))
    spec = bundle.spec
    crops = evaluation_crops(hu_zyx, anatomy_mask_zyx, crop, hu_window, len(spec.anatomy_names), eval_mode)
    probabilities, present = score_crops(bundle, crops)
    anatomies: dict[str, Any] = {}
    for k, name in enumerate(spec.anatomy_names):
        voxels = int((anatomy_mask_zyx == k + 1).sum())
        entry: dict[str, Any] = {
            "status": "assessed" if present[k] else "not_assessable",
            "voxels_on_model_grid": voxels,
            "labels": {},
        }
        if not present[k]:
            entry["reason"] = (
                "not in the scan: the anatomy's mask is empty"
                if voxels == 0
                else "outside the model's crop (or too small for one model token)"
            )
        anatomies[name] = entry
    labels: dict[str, Any] = {}
    for s, label in enumerate(spec.labels):
        anatomy = spec.anatomy_names[spec.anatomy_index[s]]
        assessed = anatomies[anatomy]["status"] == "assessed"
        decision = label_decision(
            float(probabilities[s]) if assessed else None,
            (thresholds or {}).get(label),
            thresholds is not None,
        )
        row = {"anatomy": anatomy, "status": "assessed" if assessed else "not_assessable", **decision}
        if not assessed:
            row["reason"] = f"{anatomy} not assessable: {anatomies[anatomy]['reason']}"
        anatomies[anatomy]["labels"][label] = row
        labels[label] = row
    return {
        "anatomy_set": spec.anatomy_set,
        "anatomies_found": [name for name in spec.anatomy_names if anatomies[name]["status"] == "assessed"],
        "anatomies_not_assessable": [
            name for name in spec.anatomy_names if anatomies[name]["status"] == "not_assessable"
        ],
        "positive_calls": [label for label, row in labels.items() if row["call"] == "positive"],
        "anatomies": anatomies,
        "labels": labels,
        "model_grid": {
            "crop_zyx": list(crop),
            "eval_mode": eval_mode,
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


# ------------------------------------------------------------------------------ study identity
def find_converted_study(config: FvlmConfig, study: str) -> tuple[Path, str] | None:
    """``study`` (a study_id of ``<paths.converted>/studies.parquet``) -> (volume path, study_id)."""
    from core import layout
    from preprocessing.conversion import read_manifest

    converted = config.path(config.paths.converted)
    row = read_manifest(layout.converted_manifest(converted)).get(study)
    if row is None or row.status != "ok":
        return None
    volume = layout.resolve_volume(converted, row.study_id, row.volume_path)
    return (volume, row.study_id) if volume is not None and volume.is_file() else None


def resolve_study_input(config: FvlmConfig, study: str) -> Path:
    """``--study``: a converted study_id (its volume) or a study folder name under ``paths.raw_dicom``."""
    converted = find_converted_study(config, study)
    if converted is not None:
        return converted[0]
    folder = config.path(config.paths.raw_dicom) / study
    if folder.is_dir() and not Path(study).is_absolute() and ".." not in Path(study).parts:
        return folder
    raise PredictionError(
        f"study {study}: neither a converted study_id in {config.path(config.paths.converted)} "
        f"nor a study folder in {config.path(config.paths.raw_dicom)}"
    )


def find_mask_by_identity(config: FvlmConfig, image: Any, study_id: str) -> tuple[Any, str, list[str]] | None:
    """The study's mask from the pipeline's own outputs, on ``image``'s grid: (ids, source, warnings).

    First the segment stage's ``<paths.segmented>/masks/<study_id>.nii.gz``, then the precomputed masks
    (``paths.precomputed_masks``; file stem = study_id or the raw study key it pseudonymises to). None
    when neither holds the study.
    """
    from core import layout
    from segmentation.geometry import MaskGeometryError, resample_labels_to_grid
    from segmentation.precomputed import MaskSourceError, PrecomputedBackend, load_multilabel_nifti

    segmented = layout.mask_path(config.path(config.paths.segmented), study_id)
    if segmented.is_file():
        try:
            labels = load_multilabel_nifti(segmented)
            ids = resample_labels_to_grid(
                labels.ids, labels.affine, tuple(image.shape[:3]), image.affine, what=f"mask {segmented.name}"
            )
        except (MaskSourceError, MaskGeometryError) as error:
            raise PredictionError(f"segmented mask of study {study_id}: {error}") from None
        warnings = [] if ids is labels.ids else [f"mask {segmented.name}: on another grid; resampled (nearest)"]
        return ids, "segmented", warnings
    masks_dir = config.path(config.paths.precomputed_masks)
    if masks_dir.is_dir():
        backend = PrecomputedBackend(
            masks_dir, salt=config.privacy.salt, pseudonym_length=config.privacy.pseudonym_length
        )
        if study_id in backend.index():
            try:
                ids, warnings = backend.segment_study(study_id, image)
            except MaskSourceError as error:
                raise PredictionError(f"precomputed mask of study {study_id}: {error}") from None
            return ids, "precomputed", list(warnings)
    return None


# ------------------------------------------------------------------------------------ the model
@dataclass
class ResolvedModel:
    """The model predict scores with: one concrete version and the thresholds stored on it."""

    bundle: ZeroShotModel
    ref: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    thresholds: dict[str, Any] | None = None  # label -> {"anatomy", "threshold", "val_auc", "method"}
    thresholds_info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "thresholds": self.thresholds_info,
        }


def load_thresholds_file(path: str | Path) -> dict[str, Any]:
    """A ``thresholds.json`` written by ``fvlm evaluate`` (schema_version 1)."""
    source = Path(path)
    try:
        table = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PredictionError(f"{source}: cannot read thresholds ({type(error).__name__}: {error})") from None
    if not isinstance(table, dict) or table.get("schema_version") != 1 or not isinstance(table.get("labels"), dict):
        raise PredictionError(f"{source}: not a thresholds.json of schema_version 1")
    return table


def resolve_model(
    config: FvlmConfig, model_ref: str | Path, work_dir: str | Path, thresholds_path: str | Path | None = None
) -> ResolvedModel:
    """Resolve ``model_ref`` to one version, load it and read that version's thresholds.

    ``models:/name@alias`` -> the version the alias points at now (``models:/name/<version>`` is then
    what is downloaded, so model and thresholds cannot come from two versions). ``thresholds_path``
    (a thresholds.json) overrides the registry's; it must name the same version when both are known.
    """
    from training.evaluation import tracking

    ref = str(model_ref)
    tracking_uri = tracking.tracking_uri_for(config.root, config.tracking.mlflow_tracking_uri)
    try:
        version = tracking.resolve_model_version(tracking_uri, ref)
        pinned = f"models:/{version['name']}/{version['version']}" if version else ref
        bundle = _load_bundle(pinned, tracking_uri, Path(work_dir) / "model")
    except PredictionError:
        raise
    except Exception as error:  # noqa: BLE001 - unknown alias, missing dir, ...
        raise PredictionError(f"model {ref}: cannot load ({type(error).__name__}: {error})") from None
    resolved = ResolvedModel(bundle, ref)
    if version:
        resolved.name, resolved.version = version["name"], version["version"]
        resolved.alias, resolved.run_id = version["alias"], version["run_id"]
    spec = bundle.spec
    label_anatomy = {label: spec.anatomy_names[spec.anatomy_index[s]] for s, label in enumerate(spec.labels)}
    table: dict[str, Any] | None = None
    if thresholds_path is not None:
        table = load_thresholds_file(thresholds_path)
        named = table.get("model") or {}
        if (
            resolved.version
            and named.get("version")
            and (named.get("name"), str(named.get("version")))
            != (
                resolved.name,
                resolved.version,
            )
        ):
            raise PredictionError(
                f"{thresholds_path}: thresholds of {named.get('name')} v{named.get('version')}, "
                f"not of the model {resolved.name} v{resolved.version}"
            )
        source = f"file {thresholds_path}"
    elif resolved.name and resolved.version:
        table = tracking.read_thresholds(tracking_uri, resolved.name, resolved.version, label_anatomy)
        source = f"model version tags of {resolved.name} v{resolved.version}"
    if table is None:
        resolved.thresholds_info = {
            "source": None,
            "method": None,
            "note": (
                f"{resolved.name} v{resolved.version} has no stored thresholds (evaluated before thresholds were "
                "stored, or never evaluated): probabilities without calls"
                if resolved.version
                else "a local model has no registry thresholds (pass --thresholds <paths.eval>/thresholds.json): "
                "probabilities without calls"
            ),
        }
        return resolved
    labels = {label: entry for label, entry in table["labels"].items() if label in label_anatomy}
    methods = sorted({str(entry.get("method")) for entry in labels.values()})
    resolved.thresholds = labels
    resolved.thresholds_info = {
        "source": source,
        "method": ",".join(methods) if methods else None,
        "note": f"thresholds chosen on the validation split at evaluation ({len(labels)} of {len(spec.labels)} labels)",
    }
    for key in ("eval_data_hash", "eval_mode"):
        if table.get(key):
            resolved.thresholds_info[key] = table[key]
    return resolved


def _load_bundle(model_uri: str, tracking_uri: str, download_root: Path) -> ZeroShotModel:
    """The loaded model: the logged model's fVLM directory (see training.evaluation.tracking)."""
    from training.evaluation import tracking

    return load_zero_shot_model(tracking.resolve_model_dir(model_uri, tracking_uri, download_root))


# ------------------------------------------------------------------------------------ one study
def predict_study(
    config: FvlmConfig,
    model_ref: str | Path,
    input_path: str | Path,
    *,
    mask_path: str | Path | None = None,
    work_dir: str | Path,
    thresholds_path: str | Path | None = None,
    png_path: str | Path | None = None,
) -> dict[str, Any]:
    """DICOM dir / NIfTI / converted volume (+ mask) -> prediction payload (schema_version 1).

    ``png_path``: also write the one-page picture (key slices, anatomy overlay, positive calls).
    """
    from segmentation.model_grid import EmptyRoiError, prepare_model_grid

    for name, given in (("input", input_path), ("mask", mask_path)):  # fail fast, before any model download
        if given is not None and not Path(given).exists():
            raise PredictionError(f"{given}: no such file or directory ({name})")
    model = resolve_model(config, model_ref, work_dir, thresholds_path)
    bundle = model.bundle
    image, info = load_input_image(input_path, config, Path(work_dir) / "converted")
    if info["input_kind"] == "nifti":
        from core.layout import nifti_stem

        converted = find_converted_study(config, nifti_stem(Path(input_path).name))
        if converted is not None:
            info = {"input_kind": "converted", "study_id": converted[1]}
    warnings = list(info.pop("warnings", []))
    if mask_path is not None:
        ids, mask_source = load_or_segment_mask(image, mask_path, config, bundle.spec.anatomy_set), "argument"
    else:
        found = find_mask_by_identity(config, image, info["study_id"]) if info.get("study_id") else None
        if found is not None:
            ids, mask_source, mask_warnings = found
            warnings += mask_warnings
        elif config.segment.backend == "totalsegmentator":
            ids, mask_source = load_or_segment_mask(image, None, config, bundle.spec.anatomy_set), "totalsegmentator"
        else:
            where = f"study {info['study_id']}" if info.get("study_id") else f"{input_path}"
            raise PredictionError(
                f"{where}: no mask found (looked in {config.path(config.paths.segmented)}/masks and "
                f"{config.path(config.paths.precomputed_masks)}); pass --mask, or set segment.backend: "
                "totalsegmentator to segment it"
            )
    spacing = tuple(bundle.meta.get("spacing_zyx_mm") or config.grid.spacing_zyx_mm)
    try:
        grid = prepare_model_grid(
            image, ids, bundle.spec.anatomy_set, spacing, config.grid.roi_margin_slices, config.grid.roi_margin_voxels
        )
    except EmptyRoiError as error:
        raise PredictionError(f"{input_path}: {error}") from None
    hu_zyx, index_zyx = np.asarray(grid.hu_zyx), np.asarray(grid.anatomy_index_zyx)
    eval_mode = str(model.thresholds_info.get("eval_mode") or config.evaluate.eval_mode)
    scored = predict_prepared(bundle, hu_zyx, index_zyx, model.thresholds, eval_mode)
    payload: dict[str, Any] = {
        "schema_version": PREDICTION_SCHEMA_VERSION,
        "model": model.as_dict(),
        "input": {
            "kind": info["input_kind"],
            "study_id": info.get("study_id"),
            "mask_source": mask_source,
            "series_description": info.get("series_description"),
        },
        **scored,
        "warnings": warnings,
        "png": None,
    }
    if png_path is not None:
        from training.inference.report_png import write_prediction_png

        payload["png"] = str(write_prediction_png(payload, hu_zyx, index_zyx, bundle.spec.anatomy_names, png_path))
    return payload
