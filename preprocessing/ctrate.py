"""CT-RATE adapter: NIfTI volumes + metadata CSV -> the same RAS int16 HU volumes and manifest.

CT-RATE ships ``train/train_1/train_1_a/train_1_a_1.nii.gz`` volumes whose NIfTI headers do not carry
the scanner geometry, plus a metadata CSV (``VolumeName, XYSpacing, ZSpacing, ImagePositionPatient,
ImageOrientationPatient, RescaleSlope, RescaleIntercept``). The header is rebuilt from the CSV
(DICOM LPS geometry -> RAS). Array convention assumed (as the DICOM export that produced the files):
axis 0 = column index (along the first IOP direction), axis 1 = row index, axis 2 = slice index
increasing along the slice normal from ImagePositionPatient.

Rescaling: the v2 release is already in HU and applying the CSV slope/intercept again is a known bug
(CT-CLIP issue #50). The decision is taken per volume from the data: stored values with a negative
minimum are HU already (air is about -1000); a non-negative integer range with a negative intercept
is raw scanner values and gets rescaled. The decision is written to ``rescale_decision``.

Study key = ``VolumeName`` as written in the CSV (the key of the CT-RATE reports); patient key =
its ``train_N`` / ``valid_N`` part.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import layout
from core.batches import MapBatches
from core.io import sha256_file
from preprocessing.conversion import (
    ConvertItem,
    ConvertJob,
    ConvertSettings,
    ConvertSummary,
    ManifestRow,
    convert_items,
    finish_conversion,
    read_manifest,
    remove_stale_volumes,
    reusable,
)
from preprocessing.deid import OWN_PATIENT_WARNING, scrub_text, study_patient_pseudonym, study_pseudonym

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = (
    "VolumeName",
    "XYSpacing",
    "ZSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
)
_PATIENT = re.compile(r"^((?:train|valid|val|test)_\d+)", re.IGNORECASE)


class CtrateError(ValueError):
    """A CT-RATE volume or metadata row that cannot be used (message = quarantine reason)."""


@dataclass(frozen=True)
class CtrateVolume:
    volume_name: str  # the study key (VolumeName column)
    path: Path | None
    metadata: dict[str, str] | None


def volume_stem(name: str) -> str:
    base = Path(name).name
    for suffix in (".nii.gz", ".nii"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def patient_key(volume_name: str) -> str | None:
    match = _PATIENT.match(volume_stem(volume_name))
    return match.group(1) if match else None


def _numbers(text: str, count: int, column: str) -> list[float]:
    try:
        value = (
            ast.literal_eval(str(text).strip())
            if str(text).strip().startswith(("[", "("))
            else [float(v) for v in re.split(r"[\\,\s]+", str(text).strip()) if v]
        )
        values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (ValueError, SyntaxError):
        raise CtrateError(f"metadata column {column}: cannot parse {str(text)[:40]!r}") from None
    if count == 1 and values:
        return values[:1]
    if len(values) != count:
        raise CtrateError(f"metadata column {column}: expected {count} numbers, got {len(values)}")
    return values


def read_metadata(metadata_csv: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    path = Path(metadata_csv)
    if not path.is_file():
        raise FileNotFoundError(f"CT-RATE metadata CSV not found: {path}")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        return {volume_stem(row["VolumeName"]): row for row in reader}


def find_ctrate_volumes(input_dir: str | os.PathLike[str], metadata: dict[str, dict[str, str]]) -> list[CtrateVolume]:
    """Pair every NIfTI under ``input_dir`` with its metadata row (either may be missing)."""
    files: dict[str, Path] = {}
    for path in sorted(Path(input_dir).rglob("*")):
        if (
            path.is_file()
            and (path.name.endswith(".nii.gz") or path.name.endswith(".nii"))
            and ".tmp-" not in path.name
        ):
            files.setdefault(volume_stem(path.name), path)
    names = sorted(set(files) | set(metadata))
    return [
        CtrateVolume(
            volume_name=metadata[name]["VolumeName"] if name in metadata else Path(files[name]).name,
            path=files.get(name),
            metadata=metadata.get(name),
        )
        for name in names
    ]


def ctrate_affine_ras(metadata: dict[str, str]) -> np.ndarray:
    """Voxel (i, j, k) -> RAS affine from the CSV geometry."""
    xy = _numbers(metadata["XYSpacing"], 2, "XYSpacing")
    z = _numbers(metadata["ZSpacing"], 1, "ZSpacing")[0]
    origin = _numbers(metadata["ImagePositionPatient"], 3, "ImagePositionPatient")
    orientation = np.array(_numbers(metadata["ImageOrientationPatient"], 6, "ImageOrientationPatient"))
    row_cos, col_cos = orientation[:3], orientation[3:]
    if min(xy) <= 0 or z <= 0:
        raise CtrateError("metadata spacing must be positive")
    normal = np.cross(row_cos, col_cos)
    if abs(np.linalg.norm(normal) - 1) > 1e-3:
        raise CtrateError("metadata ImageOrientationPatient is not two orthonormal directions")
    affine = np.eye(4)
    affine[:3, 0] = row_cos * xy[1]  # column spacing along the row direction
    affine[:3, 1] = col_cos * xy[0]
    affine[:3, 2] = normal * z
    affine[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def to_hu(stored: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, str]:
    """int16 HU + the recorded decision (rescale raw values, or keep data already in HU).

    Two hypotheses are compared on a subsample: "stored values are HU" vs "slope * stored + intercept
    is HU"; the one that puts more voxels into the air band (-1100..-900 HU, abundant in any chest CT)
    wins. Without air in either reading, a negative minimum means HU (raw CT values are >= 0 unless
    signed padding is present).
    """
    sample = np.asarray(
        stored[:: max(1, stored.shape[0] // 64), ::4, :: max(1, stored.shape[2] // 64)], dtype=np.float64
    )
    low, high = float(stored.min()), float(stored.max())
    identity = slope == 1.0 and intercept == 0.0
    air_as_stored = float(np.mean((sample >= -1100) & (sample <= -900)))
    rescaled = sample * slope + intercept
    air_rescaled = float(np.mean((rescaled >= -1100) & (rescaled <= -900)))
    if identity:
        apply, why = False, "metadata rescale is the identity"
    elif air_as_stored > air_rescaled:
        apply, why = (
            False,
            f"already HU: {air_as_stored:.0%} of voxels in the air band as stored vs {air_rescaled:.0%} rescaled",
        )
    elif air_rescaled > air_as_stored:
        apply, why = (
            True,
            f"raw stored values: {air_rescaled:.0%} of voxels in the "
            f"air band after rescale vs {air_as_stored:.0%} as stored",
        )
    else:
        apply = low >= 0
        why = f"no air band either way; stored minimum {low:g} {'>= 0: raw values' if apply else '< 0: already HU'}"
    if apply:
        hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        decision = f"rescaled (slope {slope:g}, intercept {intercept:g}; stored range {low:g}..{high:g}): {why}"
    else:
        hu = stored
        decision = f"not rescaled (stored range {low:g}..{high:g}; avoids double rescaling, CT-CLIP #50): {why}"
    if hu.dtype.kind == "f":
        hu = np.rint(hu, out=hu if hu is not stored else None)
    return np.clip(hu, -1024, 32767).astype(np.int16), decision


def convert_ctrate_volume(
    volume: CtrateVolume,
    output_dir: str | os.PathLike[str],
    settings: ConvertSettings,
    *,
    previous: ManifestRow | None = None,
) -> ManifestRow:
    """One CT-RATE volume -> RAS int16 HU NIfTI; bad input gives a quarantined row."""
    import nibabel as nib

    from preprocessing.volume_writer import write_ras_nifti

    started = time.perf_counter()
    out = Path(output_dir)
    length = settings.pseudonym_length
    study_id = study_pseudonym(volume.volume_name, settings.salt, length)
    patient_id, own_patient = study_patient_pseudonym(
        patient_key(volume.volume_name), volume.volume_name, settings.salt, length
    )
    row = ManifestRow(
        study_id=study_id,
        patient_id=patient_id,
        warnings=[OWN_PATIENT_WARNING] if own_patient else [],
        status="quarantined",
        n_input_files=1 if volume.path else 0,
        config_hash=settings.config_hash(),
        input_format="ctrate",
        selection_policy="ctrate: one volume per VolumeName",
    )
    phi = {volume.volume_name}
    if volume.path is None:
        row.reason = "volume listed in the metadata CSV but no NIfTI file found under the input folder"
        return row
    if volume.metadata is None:
        row.reason = scrub_text(f"{volume.path.name}: no row in the metadata CSV (geometry unknown)", phi)
        return row
    try:
        metadata_json = json.dumps(volume.metadata, sort_keys=True)
        row.source_hash = hashlib.sha256((sha256_file(volume.path) + metadata_json).encode()).hexdigest()
    except OSError as error:
        row.reason = f"cannot read the NIfTI file: {error.strerror or type(error).__name__}"
        return row
    if reusable(previous, row.source_hash, row.config_hash, out):
        assert previous is not None
        previous.reused = True
        return previous
    try:
        image = nib.load(volume.path)
        if len(image.shape) != 3:
            raise CtrateError(f"expected a 3-D volume, got shape {image.shape}")
        stored = np.asanyarray(image.dataobj)
        slope = _numbers(volume.metadata["RescaleSlope"], 1, "RescaleSlope")[0]
        intercept = _numbers(volume.metadata["RescaleIntercept"], 1, "RescaleIntercept")[0]
        hu_ijk, decision = to_hu(stored, slope, intercept)
        affine = ctrate_affine_ras(volume.metadata)
        volume_relative = layout.volume_relpath(study_id, settings.output_extension)
        written = write_ras_nifti(hu_ijk.transpose(2, 1, 0), affine, out / volume_relative)
    except (CtrateError, ValueError, OSError, EOFError) as error:
        row.reason = scrub_text(f"{volume.path.name}: {error}", phi)
        remove_stale_volumes(out, study_id)
        return row
    row.status = "ok"
    row.rescale_decision = decision
    row.volume_path = volume_relative
    row.slices = written.shape_zyx[0]
    row.n_input_slices = int(stored.shape[2])
    row.shape = list(written.shape_zyx)
    row.spacing = [round(v, 6) for v in written.spacing_zyx_mm]
    row.affine = [float(v) for v in written.affine_ras.ravel()]
    row.hu_min, row.hu_max = written.hu_min, written.hu_max
    if written.hu_max > 4000 or written.hu_min > -500:
        row.warnings.append(f"implausible HU range {written.hu_min}..{written.hu_max}: check the rescale decision")
    row.seconds = round(time.perf_counter() - started, 3)
    return row


def ctrate_settings(settings: ConvertSettings) -> ConvertSettings:
    """What CT-RATE conversion hashes: the salt, pseudonym length and output extension of ``settings``
    (series selection and assembly options do not apply to a ready-made volume)."""
    return ConvertSettings(
        salt=settings.salt,
        output_extension=settings.output_extension,
        study_key_tag="VolumeName",
        pseudonym_length=settings.pseudonym_length,
        series_preference=("ctrate",),
    )


def run_ctrate(job: ConvertJob, map_batches: MapBatches | None = None) -> ConvertSummary:
    """``run_convert`` for ``input_format == "ctrate"``: same outputs as the DICOM path."""
    if job.metadata_csv is None:
        raise ValueError("CT-RATE input needs a metadata CSV (convert.ctrate_metadata_csv)")
    started = time.perf_counter()
    out = Path(job.output_dir)
    (out / layout.VOLUMES_DIR).mkdir(parents=True, exist_ok=True)
    settings = ctrate_settings(job.settings)
    salt, length = settings.salt, settings.pseudonym_length
    metadata = read_metadata(job.metadata_csv)
    volumes = find_ctrate_volumes(job.input_dir, metadata)
    previous = read_manifest(layout.converted_manifest(out))
    items = []
    for volume in volumes:
        study_id = study_pseudonym(volume.volume_name, salt, length)
        items.append(ConvertItem(study_id, volume, previous.get(study_id)))

    def crash_row(item: ConvertItem, reason: str) -> ManifestRow:
        volume: CtrateVolume = item.source  # type: ignore[assignment]
        return ManifestRow(
            study_id=item.study_id,
            patient_id=study_patient_pseudonym(patient_key(volume.volume_name), volume.volume_name, salt, length)[0],
            status="quarantined",
            reason=reason,
            n_input_files=1 if volume.path else 0,
            config_hash=settings.config_hash(),
            input_format="ctrate",
        )

    rows = convert_items(items, out, settings, convert_ctrate_volume, crash_row, job.workers, map_batches)
    return finish_conversion(rows, [], sum(1 for v in volumes if v.path), out, started)
