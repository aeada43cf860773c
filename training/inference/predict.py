"""Prediction: a new study -> per-anatomy, per-label calls (JSON, schema in docs/predict.md).

Input is a DICOM directory (converted with the preprocessing library), a NIfTI HU volume, or a study
of the converted manifest (``study_id``). The anatomy mask comes from ``--mask`` (TotalSegmentator
``total`` ids on the volume's grid), else is found from the study's identity (the segment stage's
``<paths.segmented>/masks/<study_id>.nii.gz``, then ``paths.precomputed_masks`` keyed by study_id or
by the raw key, e.g. the StudyInstanceUID), else the TotalSegmentator backend when
``segment.backend: totalsegmentator``. Volume and mask are brought to the model grid, windowed with
the model's ``hu_window`` and scored with its zero-shot prompt pairs.

Each label gets its probability, the decision threshold chosen on the validation split when the
model version was evaluated (model version tags, :func:`training.tracking.thresholds.read_thresholds`),
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
    from preprocessing.convert import ConvertJob
    from segmentation.stage import BackendName, SegmentBackend, SegmentJob

log = logging.getLogger(__name__)

PREDICTION_SCHEMA_VERSION = 1
PREDICTION_SCHEMA_FILE = Path(__file__).with_name("prediction.schema.json")


class PredictionError(RuntimeError):
    """A study that cannot be predicted; the message names the input and the reason (no PHI)."""


@dataclass(frozen=True, kw_only=True)
class PredictJob:
    """One prediction: which model, which study, and the pipeline's own stage jobs (build it with
    :meth:`from_config`).

    ``convert`` and ``segment`` are the jobs ``fvlm convert`` / ``fvlm segment`` build from the same
    config (``ConvertJob.from_config`` / ``SegmentJob.from_config``): a DICOM study is converted with the
    convert stage's settings, a mask is segmented with the segment stage's backend, and the converted /
    segmented / precomputed folders are read from those jobs. Give ``input_path`` or ``study``.
    """

    model_ref: str
    input_path: Path | None = None
    study: str | None = None  # a converted study_id or a study folder name under paths.raw_dicom
    mask_path: Path | None = None
    thresholds_path: Path | None = None
    png_path: Path | None = None
    convert: ConvertJob
    segment: SegmentJob
    tracking_uri: str
    spacing_zyx_mm: tuple[float, float, float]  # used when the model does not record its grid
    roi_margin_slices: int
    roi_margin_voxels: int
    eval_mode: str  # used when the model version's thresholds do not record theirs

    @classmethod
    def from_config(
        cls,
        config: FvlmConfig,
        *,
        model: str | Path | None = None,
        input_path: str | Path | None = None,
        study: str | None = None,
        mask: str | Path | None = None,
        thresholds: str | Path | None = None,
        png: str | Path | None = None,
    ) -> PredictJob:
        """The job of ``config``; ``model`` defaults to
        ``models:/<tracking.registered_model>@<evaluate.promote_alias>``."""
        from preprocessing.convert import ConvertJob
        from segmentation.stage import SegmentJob
        from training.tracking.runs import tracking_uri_for

        return cls(
            model_ref=str(model or f"models:/{config.tracking.registered_model}@{config.evaluate.promote_alias}"),
            input_path=Path(input_path) if input_path is not None else None,
            study=study,
            mask_path=Path(mask) if mask is not None else None,
            thresholds_path=Path(thresholds) if thresholds is not None else None,
            png_path=Path(png) if png is not None else None,
            convert=ConvertJob.from_config(config),
            segment=SegmentJob.from_config(config),
            tracking_uri=tracking_uri_for(config.root, config.tracking.mlflow_tracking_uri),
            spacing_zyx_mm=config.grid.spacing_zyx_mm,
            roi_margin_slices=config.grid.roi_margin_slices,
            roi_margin_voxels=config.grid.roi_margin_voxels,
            eval_mode=config.evaluate.eval_mode,
        )

    def segment_backend(self, backend: BackendName, anatomy_set: str) -> SegmentBackend:
        """The segment stage's backend (``SegmentJob.make_backend``) for the model's anatomy set."""
        from dataclasses import replace

        return replace(self.segment, backend=backend, anatomy_set=anatomy_set).make_backend()


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
        # assessed labels without a threshold: a probability, but no call is possible
        "no_call_labels": [
            label for label, row in labels.items() if row["status"] == "assessed" and row["call"] is None
        ],
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
def load_input_image(input_path: str | Path, convert: ConvertJob, work_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """A RAS+ nibabel HU image for a NIfTI file or a DICOM directory holding exactly one study.

    DICOM goes through the convert stage's own code and settings (``convert.settings``: series
    selection, HU, geometry, de-identification); the returned info carries the pseudonymous
    ``study_id`` only (no header values).
    """
    import nibabel as nib

    from core import layout

    source = Path(input_path)
    if not source.exists():
        raise PredictionError(f"{source}: no such file or directory")
    if source.is_file():
        if not source.name.endswith(layout.NIFTI_EXTENSIONS):
            raise PredictionError(f"{source}: not a NIfTI file (.nii / .nii.gz) nor a DICOM directory")
        try:
            image = nib.load(str(source))
            image = nib.as_closest_canonical(image)
        except Exception as error:  # noqa: BLE001 - any reader failure is "cannot read this study"
            raise PredictionError(f"{source}: cannot read NIfTI ({type(error).__name__}: {error})") from None
        if len(image.shape) != 3:
            raise PredictionError(f"{source}: expected a 3D volume, got shape {tuple(image.shape)}")
        return image, {"input_kind": "nifti"}
    from preprocessing.convert import convert_study
    from preprocessing.dicom_discovery import discover_studies

    settings = convert.settings
    # a study without StudyInstanceUID is keyed by its folder relative to the raw DICOM root, as convert keyed
    # it (docs/convert.md, Identity): a folder inside convert's input keeps convert's key, whatever path was
    # typed; a folder elsewhere (a copy) is keyed by its own name, as if its parent were the raw root
    raw_root, folder = Path(convert.input_dir).resolve(), source.resolve()
    key_root = raw_root if folder.is_relative_to(raw_root) else folder.parent
    studies = discover_studies(source, study_key_tag=settings.study_key_tag, key_root=key_root)
    if not studies:
        raise PredictionError(f"{source}: no readable DICOM study found")
    if len(studies) > 1:
        raise PredictionError(f"{source}: holds {len(studies)} studies; pass the folder of one study")
    if convert.identity_map is not None:  # `fvlm lookup <study_id>` answers for the pseudonym predict prints
        from preprocessing.convert import record_study_identities

        record_study_identities(convert.identity_map, studies, settings, Path(work_dir))
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


def load_or_segment_mask(
    image: Any, mask_path: str | Path | None, job: PredictJob, anatomy_set_name: str
) -> tuple[Any, list[str]]:
    """(TotalSegmentator ``total`` ids (x, y, z) on the image's grid, warnings): from ``mask_path`` or the
    segment stage's TotalSegmentator backend (``job.segment``, for the model's anatomy set; its warnings
    say e.g. that the weights are stand-ins)."""
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
        return np.asarray(mask_image.dataobj).astype(np.uint8), []
    backend = job.segment_backend("totalsegmentator", anatomy_set_name)
    try:
        ids, backend_warnings = backend.segment_study("study", image)
        return ids, list(backend_warnings)
    except Exception as error:  # noqa: BLE001 - weights missing, nnU-Net failure, ...
        raise PredictionError(
            f"segmentation failed ({type(error).__name__}: {error}); pass --mask with a "
            f"precomputed TotalSegmentator mask or install the weights"
        ) from None
    finally:
        backend.close()


def prediction_warnings(model: ResolvedModel, bundle: ZeroShotModel, mask_source: str, job: PredictJob) -> list[str]:
    """What makes this prediction weaker than it looks: a model whose evaluation lacked the evidence for a
    promotion (or predates the check), CLIP-style scoring on the global embedding, a segmented mask that came
    from stand-in (random) TotalSegmentator weights."""
    warnings: list[str] = []
    if model.version is not None and model.evidence is None:
        warnings.append(
            f"{model.name} v{model.version}: evaluated before the evidence check (evaluate.min_*): its AUC may rest "
            "on too few studies; re-run fvlm evaluate"
        )
    elif model.evidence not in (None, "ok"):
        warnings.append(f"{model.name} v{model.version}: its evaluation has too little evidence: {model.evidence}")
    if bundle.spec.use_global:
        warnings.append(
            "every anatomy is scored on the global (whole-volume) embedding: a CLIP-style model, not per anatomy"
        )
    if mask_source == "segmented":
        standin = segmented_with_standin(job)
        if standin:
            warnings.append(f"the segment stage's masks came from {standin}: labels are noise")
    return warnings


def segmented_with_standin(job: PredictJob) -> str | None:
    """The segment stage's model id when it ran with stand-in random weights (``segments.parquet``), else None."""
    from core import layout

    manifest = layout.segments_manifest(job.segment.output_dir)
    if not manifest.is_file():
        return None
    import pyarrow.parquet as pq

    ids = set(pq.read_table(manifest, columns=["model_id"]).column("model_id").to_pylist())
    return next((str(i) for i in sorted(map(str, ids)) if "STANDIN" in i), None)


# ------------------------------------------------------------------------------ study identity
def find_converted_study(job: PredictJob, study: str) -> tuple[Path, str] | None:
    """``study`` (a study_id of the convert stage's ``studies.parquet``) -> (volume path, study_id)."""
    from core import layout
    from preprocessing.conversion import read_manifest

    converted = job.convert.output_dir
    row = read_manifest(layout.converted_manifest(converted)).get(study)
    if row is None or row.status != "ok":
        return None
    volume = layout.resolve_volume(converted, row.study_id, row.volume_path)
    return (volume, row.study_id) if volume is not None and volume.is_file() else None


def resolve_study_input(job: PredictJob, study: str) -> Path:
    """``--study``: a converted study_id (its volume) or a study folder name under the convert stage's input."""
    converted = find_converted_study(job, study)
    if converted is not None:
        return converted[0]
    folder = job.convert.input_dir / study
    if folder.is_dir() and not Path(study).is_absolute() and ".." not in Path(study).parts:
        return folder
    raise PredictionError(
        f"study {study}: neither a converted study_id in {job.convert.output_dir} "
        f"nor a study folder in {job.convert.input_dir}"
    )


def find_mask_by_identity(job: PredictJob, image: Any, study_id: str) -> tuple[Any, str, list[str]] | None:
    """The study's mask from the pipeline's own outputs, on ``image``'s grid: (ids, source, warnings).

    First the segment stage's ``<paths.segmented>/masks/<study_id>.nii.gz``, then the precomputed masks
    (the segment stage's precomputed backend on ``paths.precomputed_masks``; file stem = study_id or the
    raw study key it pseudonymises to). None when neither holds the study.
    """
    from core import layout
    from segmentation.geometry import MaskGeometryError, resample_labels_to_grid
    from segmentation.precomputed import MaskSourceError, PrecomputedBackend, load_multilabel_nifti

    segmented = layout.mask_path(job.segment.output_dir, study_id)
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
    masks_dir = job.segment.precomputed_dir
    if masks_dir is not None and masks_dir.is_dir():
        backend = job.segment_backend("precomputed", job.segment.anatomy_set)
        assert isinstance(backend, PrecomputedBackend)
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
    evidence: str | None = None  # the version's evaluation evidence tag ("ok" or why not)

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
    tracking_uri: str, model_ref: str | Path, work_dir: str | Path, thresholds_path: str | Path | None = None
) -> ResolvedModel:
    """Resolve ``model_ref`` to one version, load it and read that version's thresholds.

    ``models:/name@alias`` -> the version the alias points at now (``models:/name/<version>`` is then
    what is downloaded, so model and thresholds cannot come from two versions). ``thresholds_path``
    (a thresholds.json) overrides the registry's; it must name the same version when both are known.
    """
    from training.tracking.registry import resolve_model_version
    from training.tracking.thresholds import read_thresholds

    ref = str(model_ref)
    try:
        version = resolve_model_version(tracking_uri, ref)
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
        resolved.evidence = version.get("evidence")
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
        table = read_thresholds(tracking_uri, resolved.name, resolved.version, label_anatomy)
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
    for key in ("eval_data_hash", "eval_mode", "negative_rule"):
        if table.get(key):
            resolved.thresholds_info[key] = table[key]
    rule = table.get("negative_rule")
    if rule and rule != bundle.spec.negative_rule:  # score as the thresholds were chosen
        from training.models.zero_shot import with_negative_rule

        resolved.bundle = with_negative_rule(bundle, str(rule))
    return resolved


def _load_bundle(model_uri: str, tracking_uri: str, download_root: Path) -> ZeroShotModel:
    """The loaded model: the logged model's fVLM directory (see training.tracking.registry)."""
    from training.tracking.registry import resolve_model_dir

    return load_zero_shot_model(resolve_model_dir(model_uri, tracking_uri, download_root))


# ------------------------------------------------------------------------------------ one study
def run_predict(job: PredictJob, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Predict's one entry: the job's study (DICOM dir / NIfTI / converted volume, or ``job.study``)
    (+ mask) -> prediction payload (schema_version 1); also the one-page picture when ``job.png_path``
    (key slices, anatomy overlay, positive calls). ``work_dir``: where the model is downloaded and a
    DICOM study converted (default: a temporary folder, removed afterwards)."""
    if (job.input_path is None) == (job.study is None):
        raise PredictionError("give either an input path or a study")
    if work_dir is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="fvlm-predict-") as temporary:
            return run_predict(job, temporary)
    input_path = job.input_path if job.input_path is not None else resolve_study_input(job, str(job.study))
    return predict_study(job, input_path, Path(work_dir))


def predict_study(job: PredictJob, input_path: Path, work_dir: Path) -> dict[str, Any]:
    """One study's payload (``input_path``: a DICOM dir, a NIfTI or a converted volume)."""
    from segmentation.model_grid import EmptyRoiError, prepare_model_grid

    mask_path = job.mask_path
    for name, given in (("input", input_path), ("mask", mask_path)):  # fail fast, before any model download
        if given is not None and not Path(given).exists():
            raise PredictionError(f"{given}: no such file or directory ({name})")
    model = resolve_model(job.tracking_uri, job.model_ref, work_dir, job.thresholds_path)
    bundle = model.bundle
    image, info = load_input_image(input_path, job.convert, work_dir / "converted")
    if info["input_kind"] == "nifti":
        from core.layout import nifti_stem

        converted = find_converted_study(job, nifti_stem(Path(input_path).name))
        if converted is not None:
            info = {"input_kind": "converted", "study_id": converted[1]}
    warnings = list(info.pop("warnings", []))
    if mask_path is not None:
        ids, mask_warnings = load_or_segment_mask(image, mask_path, job, bundle.spec.anatomy_set)
        mask_source = "argument"
        warnings += mask_warnings
    else:
        found = find_mask_by_identity(job, image, info["study_id"]) if info.get("study_id") else None
        if found is not None:
            ids, mask_source, mask_warnings = found
            warnings += mask_warnings
        elif job.segment.backend == "totalsegmentator":
            ids, mask_warnings = load_or_segment_mask(image, None, job, bundle.spec.anatomy_set)
            mask_source = "totalsegmentator"
            warnings += mask_warnings
        else:
            where = f"study {info['study_id']}" if info.get("study_id") else f"{input_path}"
            raise PredictionError(
                f"{where}: no mask found (looked in {job.segment.output_dir}/masks and "
                f"{job.segment.precomputed_dir}); pass --mask, or set segment.backend: "
                "totalsegmentator to segment it"
            )
    spacing = tuple(bundle.meta.get("spacing_zyx_mm") or job.spacing_zyx_mm)
    try:
        grid = prepare_model_grid(
            image, ids, bundle.spec.anatomy_set, spacing, job.roi_margin_slices, job.roi_margin_voxels
        )
    except EmptyRoiError as error:
        raise PredictionError(f"{input_path}: {error}") from None
    hu_zyx, index_zyx = np.asarray(grid.hu_zyx), np.asarray(grid.anatomy_index_zyx)
    eval_mode = str(model.thresholds_info.get("eval_mode") or job.eval_mode)
    scored = predict_prepared(bundle, hu_zyx, index_zyx, model.thresholds, eval_mode)
    warnings += prediction_warnings(model, bundle, mask_source, job)
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
    if job.png_path is not None:
        from training.inference.report_png import write_prediction_png

        payload["png"] = str(write_prediction_png(payload, hu_zyx, index_zyx, bundle.spec.anatomy_names, job.png_path))
    return payload
