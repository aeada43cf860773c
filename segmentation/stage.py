"""The ``segment`` stage: volumes -> ``masks/<study_id>.nii.gz`` + ``segments.parquet`` (+ ``qc/*.png``).

One backend instance (warm model) serves a whole batch. Per study: hash the input volume; skip it
when the manifest already holds an ok row with the same input hash and backend configuration and the
mask (and QC picture) exist; otherwise segment, write the mask atomically (uint8 TotalSegmentator ids
on the volume's exact grid and affine), compute per-anatomy statistics and write the QC picture. A bad
study is quarantined with its reason; it never stops the cohort.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

LOGGER = logging.getLogger("fvlm.segment")
MANIFEST_NAME = "segments.parquet"
MASKS_DIR = "masks"
QC_DIR = "qc"
STAGE_VERSION = "segment-1"


class SegmentBackend(Protocol):
    """What :func:`segment_studies` needs from a backend."""

    name: str

    @property
    def model_id(self) -> str: ...

    def load(self) -> Any: ...

    def close(self) -> None: ...

    def config_fingerprint(self, study_id: str | None = None) -> dict[str, Any]: ...

    def segment_study(self, study_id: str, image: Any) -> tuple[Any, list[str]]: ...


@dataclass
class SegmentSummary:
    rows: list[dict[str, Any]]
    manifest_path: Path | None
    seconds: float
    n_ok: int = 0
    n_reused: int = 0
    n_quarantined: int = 0
    study_seconds: list[float] = field(default_factory=list)   # segmented (not reused) studies only

    @property
    def ok(self) -> bool:
        return self.n_quarantined == 0

    def text(self) -> str:
        per_study = (sum(self.study_seconds) / len(self.study_seconds)) if self.study_seconds else 0.0
        lines = [f"segment: {len(self.rows)} studies: {self.n_ok} ok ({self.n_reused} unchanged, reused), "
                 f"{self.n_quarantined} quarantined; {self.seconds:.1f} s"
                 + (f", {per_study:.2f} s per segmented study" if self.study_seconds else "")]
        for row in self.rows:
            if row["status"] != "ok":
                lines.append(f"  quarantined {row['study_id']}: {row['reason']}")
            elif row.get("missing_anatomies"):
                lines.append(f"  warning {row['study_id']}: missing anatomies {', '.join(row['missing_anatomies'])}")
        if self.manifest_path:
            lines.append(f"manifest: {self.manifest_path}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- inputs
def collect_inputs(inputs: str | os.PathLike[str] | Sequence[tuple[str, str | os.PathLike[str]]]
                   ) -> list[tuple[str, Path]]:
    """(study_id, volume path) pairs from a convert output folder, a folder of volumes, or a list.

    A folder with ``studies.parquet`` (the convert stage's manifest) yields its ``status == ok`` rows
    with ``volumes/<study_id>.nii.gz``; otherwise every ``*.nii.gz`` in ``volumes/`` or the folder itself.
    """
    if not isinstance(inputs, (str, os.PathLike)):
        return [(str(study_id), Path(path)) for study_id, path in inputs]
    folder = Path(inputs)
    if not folder.is_dir():
        raise FileNotFoundError(f"segment input folder not found: {folder}")
    manifest = folder / "studies.parquet"
    volumes = folder / "volumes" if (folder / "volumes").is_dir() else folder
    if manifest.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(manifest, columns=["study_id", "status"]).to_pylist()
        pairs = []
        for row in table:
            if row["status"] == "ok":
                candidates = [volumes / f"{row['study_id']}{ext}" for ext in (".nii.gz", ".nii")]
                pairs.append((row["study_id"], next((c for c in candidates if c.exists()), candidates[0])))
        return pairs
    pairs = []
    for path in sorted(volumes.iterdir()):
        for ext in (".nii.gz", ".nii"):
            if path.name.endswith(ext) and not path.name.startswith("."):
                pairs.append((path.name[: -len(ext)], path))
                break
    return pairs


# ---------------------------------------------------------------------------------------------- manifest
def manifest_schema(anatomy_names: Sequence[str]) -> Any:
    import pyarrow as pa

    fields = [
        ("study_id", pa.string()), ("status", pa.string()), ("reason", pa.string()),
        ("backend", pa.string()), ("model_id", pa.string()), ("anatomy_set", pa.string()),
        ("config_hash", pa.string()), ("input_sha256", pa.string()), ("mask_path", pa.string()),
        ("mask_sha256", pa.string()), ("qc_path", pa.string()),
        ("shape", pa.list_(pa.int32())), ("spacing_mm", pa.list_(pa.float32())),
        ("classes_present", pa.list_(pa.int32())),
        ("missing_anatomies", pa.list_(pa.string())), ("cut_anatomies", pa.list_(pa.string())),
        ("missing_classes", pa.list_(pa.string())), ("warnings", pa.list_(pa.string())),
        ("seconds", pa.float32()), ("reused", pa.bool_()), ("stage_version", pa.string()),
    ]
    for name in anatomy_names:
        fields += [(f"{name}_voxels", pa.int64()), (f"{name}_volume_ml", pa.float32()),
                   (f"{name}_bbox_zyx", pa.list_(pa.int32())), (f"{name}_cut_by_fov", pa.bool_()),
                   (f"{name}_touches", pa.list_(pa.string()))]
    return pa.schema(fields, metadata={
        b"fvlm.stage": STAGE_VERSION.encode(),
        b"fvlm.axes": b"bbox_zyx = (z0, y0, x0, z1, y1, x1), ends exclusive, RAS canonical volume as (z, y, x)",
        b"fvlm.anatomies": json.dumps(list(anatomy_names)).encode(),
    })


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    import pyarrow.parquet as pq

    try:
        return {row["study_id"]: row for row in pq.read_table(path).to_pylist()}
    except Exception as error:  # noqa: BLE001 - an unreadable old manifest means: redo everything
        LOGGER.warning("%s: unreadable (%s); ignoring it", path, error)
        return {}


def write_manifest(rows: Sequence[dict[str, Any]], path: Path, anatomy_names: Sequence[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.io import atomic_path

    schema = manifest_schema(anatomy_names)
    clean = [{name: row.get(name) for name in schema.names} for row in sorted(rows, key=lambda r: r["study_id"])]
    table = pa.Table.from_pylist(clean, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


# ---------------------------------------------------------------------------------------------- backends
def merge_into_manifest(rows: Sequence[dict[str, Any]], path: Path, anatomy_names: Sequence[str]) -> Path:
    """Write this run's rows over the manifest at ``path``: studies this run did not touch keep their
    previous row (used by the library and by the Prefect flow)."""
    current = {row["study_id"] for row in rows}
    kept = [row for study_id, row in read_manifest(path).items() if study_id not in current]
    return write_manifest([*kept, *rows], path, anatomy_names)


def make_backend(backend: str | SegmentBackend, *, mode: str = "fast", device: str = "auto",
                 roi_subset: list[str] | None = None, roi_subset_robust: bool = True,
                 precomputed_dir: str | os.PathLike[str] | None = None, salt: str | None = None,
                 pseudonym_length: int = 16, totalseg_home: str | os.PathLike[str] | None = None) -> SegmentBackend:
    if not isinstance(backend, str):
        return backend
    if backend == "precomputed":
        if precomputed_dir is None or salt is None:
            raise ValueError("the precomputed backend needs precomputed_dir and salt")
        from segmentation.precomputed import PrecomputedBackend

        return PrecomputedBackend(precomputed_dir, salt=salt, pseudonym_length=pseudonym_length)
    if backend == "totalsegmentator":
        from segmentation.totalseg import TotalSegmentatorBackend

        return TotalSegmentatorBackend(mode=mode, device=device, roi_subset=roi_subset,
                                       roi_subset_robust=roi_subset_robust, home_dir=totalseg_home)
    raise ValueError(f"unknown segmentation backend {backend!r}; use precomputed or totalsegmentator")


def _config_hash(fingerprint: dict[str, Any], anatomy_set: str, qc: bool) -> str:
    payload = json.dumps({**fingerprint, "anatomy_set": anatomy_set, "stage": STAGE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------- per study
def _segment_one(backend: SegmentBackend, study_id: str, volume_path: Path, output_dir: Path, aset: Any,
                 qc: bool, base_row: dict[str, Any]) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np

    from core.io import atomic_path, sha256_file
    from segmentation.model_grid import _canonical_zyx
    from segmentation.stats import anatomy_stats, label_counts

    on_disk = nib.load(str(volume_path))
    if len(on_disk.shape) != 3:
        raise ValueError(f"volume is not 3D (shape {tuple(on_disk.shape)})")
    # decompress once: backend, statistics and QC all read the same in-memory array
    image = nib.Nifti1Image(np.asarray(on_disk.dataobj), on_disk.affine, on_disk.header)
    ids, warnings = backend.segment_study(study_id, image)
    ids = np.asarray(ids)
    if ids.shape != tuple(image.shape):
        raise ValueError(f"backend returned a mask of shape {ids.shape} for a volume of shape {image.shape}")
    if ids.size and int(ids.max()) > 255:
        raise ValueError(f"mask ids beyond 255 (max {int(ids.max())})")
    ids = ids.astype(np.uint8)
    mask_path = output_dir / MASKS_DIR / f"{study_id}.nii.gz"
    mask_image = nib.Nifti1Image(ids, image.affine)
    mask_image.set_qform(image.affine, code=1)
    mask_image.set_sform(image.affine, code=1)
    mask_image.header.set_xyzt_units("mm", "sec")
    with atomic_path(mask_path) as tmp:
        nib.save(mask_image, str(tmp))

    hu_zyx, ids_zyx, canonical_affine = _canonical_zyx(image, ids, None)
    _, index_zyx, _ = _canonical_zyx(image, ids, None, lookup=aset.lookup_table())   # lookup on stored order
    spacing_zyx = tuple(float(v) for v in np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0))[::-1])
    class_counts = label_counts(ids)
    stats = anatomy_stats(ids_zyx, aset, spacing_zyx, class_counts=class_counts, anatomy_index_zyx=index_zyx)
    row = dict(base_row)
    row.update({
        "status": "ok", "reason": None, "mask_path": str(Path(MASKS_DIR) / mask_path.name),
        "mask_sha256": sha256_file(mask_path), "shape": [int(v) for v in image.shape],
        "spacing_mm": [float(v) for v in image.header.get_zooms()[:3]],
        "classes_present": [int(v) for v in np.flatnonzero(class_counts) if v > 0],
        "missing_anatomies": [n for n, s in stats.items() if not s.present],
        "cut_anatomies": [n for n, s in stats.items() if s.cut_by_fov],
        "missing_classes": sorted({c for s in stats.values() for c in s.missing_classes}),
    })
    for name in row["missing_anatomies"]:
        warnings.append(f"anatomy {name} missing from the mask")
    for name, item in stats.items():
        row[f"{name}_voxels"] = item.voxels
        row[f"{name}_volume_ml"] = item.volume_ml
        row[f"{name}_bbox_zyx"] = list(item.bbox_zyx) if item.bbox_zyx else None
        row[f"{name}_cut_by_fov"] = item.cut_by_fov if item.present else None
        row[f"{name}_touches"] = list(item.touches)
    if qc:
        from segmentation.qc import write_qc_png

        qc_path = output_dir / QC_DIR / f"{study_id}.png"
        write_qc_png(hu_zyx, index_zyx, aset.anatomy_names, spacing_zyx, qc_path,
                     title=f"{study_id}  [{base_row['model_id']}]" if base_row["model_id"] != base_row["backend"]
                     else f"{study_id}  [{base_row['backend']}]",
                     voxel_counts={n: s.voxels for n, s in stats.items()})
        row["qc_path"] = str(Path(QC_DIR) / qc_path.name)
    row["warnings"] = warnings
    return row


def _reusable(previous: dict[str, Any] | None, input_sha256: str, config_hash: str, output_dir: Path,
              qc: bool) -> bool:
    if not previous or previous.get("status") != "ok":
        return False
    if previous.get("input_sha256") != input_sha256 or previous.get("config_hash") != config_hash:
        return False
    if not previous.get("mask_path") or not (output_dir / previous["mask_path"]).is_file():
        return False
    return not qc or bool(previous.get("qc_path") and (output_dir / previous["qc_path"]).is_file())


def segment_studies(inputs: str | os.PathLike[str] | Sequence[tuple[str, str | os.PathLike[str]]],
                    output_dir: str | os.PathLike[str], *, backend: str | SegmentBackend = "precomputed",
                    anatomy_set: str = "ctrate4", mode: str = "fast", device: str = "auto",
                    roi_subset: bool | list[str] = True, roi_subset_robust: bool = True,
                    precomputed_dir: str | os.PathLike[str] | None = None, salt: str | None = None,
                    pseudonym_length: int = 16, totalseg_home: str | os.PathLike[str] | None = None,
                    qc: bool = True, force: bool = False, write_manifest_file: bool = True,
                    progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> SegmentSummary:
    """Segment a batch of studies with one (warm) backend; see the module docstring.

    ``inputs``: a convert output folder (``studies.parquet`` + ``volumes/``), a folder of volumes, or
    (study_id, volume path) pairs. ``roi_subset``: True -> the anatomy set's classes, a list -> those.
    Raises only for stage-level problems (unknown backend, missing weights / masks folder); study-level
    problems become quarantined rows.
    """
    from core.io import sha256_file
    from core.anatomy_sets import load_anatomy_set

    started = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    aset = load_anatomy_set(anatomy_set)
    if roi_subset is True:
        subset = sorted({c for a in aset.anatomies for c in a.classes})
    else:
        subset = list(roi_subset) if roi_subset else None
    engine = make_backend(backend, mode=mode, device=device, roi_subset=subset, roi_subset_robust=roi_subset_robust,
                          precomputed_dir=precomputed_dir, salt=salt, pseudonym_length=pseudonym_length,
                          totalseg_home=totalseg_home)
    pairs = collect_inputs(inputs)
    if pairs and hasattr(engine, "index"):
        engine.index()          # precomputed: a missing masks folder stops the stage, not each study
    manifest_path = out / MANIFEST_NAME
    previous = read_manifest(manifest_path)
    summary = SegmentSummary(rows=[], manifest_path=manifest_path if write_manifest_file else None, seconds=0.0)
    loaded = False
    try:
        for position, (study_id, volume_path) in enumerate(pairs, start=1):
            tick = time.perf_counter()
            base_row: dict[str, Any] = {"study_id": study_id, "backend": engine.name, "anatomy_set": aset.name,
                                        "stage_version": STAGE_VERSION, "reused": False, "warnings": []}
            try:
                if not volume_path.is_file():
                    raise FileNotFoundError(f"volume file missing: {volume_path.name}")
                base_row["input_sha256"] = sha256_file(volume_path)
                base_row["model_id"] = engine.model_id
                base_row["config_hash"] = _config_hash(engine.config_fingerprint(study_id), aset.name, qc)
                prior = previous.get(study_id)
                if not force and _reusable(prior, base_row["input_sha256"], base_row["config_hash"], out, qc):
                    row = {**prior, "reused": True}
                    summary.n_reused += 1
                else:
                    if not loaded:
                        engine.load()
                        loaded = True
                    row = _segment_one(engine, study_id, volume_path, out, aset, qc, base_row)
                    row["seconds"] = round(time.perf_counter() - tick, 3)
                    summary.study_seconds.append(row["seconds"])
                summary.n_ok += 1
            except Exception as error:  # noqa: BLE001 - quarantine the study, go on with the cohort
                from segmentation.totalseg import WeightsMissingError

                if isinstance(error, WeightsMissingError):
                    raise
                reason = f"{type(error).__name__}: {error}"
                LOGGER.warning("study %s quarantined: %s", study_id, reason)
                row = {**base_row, "status": "quarantined", "reason": reason,
                       "seconds": round(time.perf_counter() - tick, 3)}
                summary.n_quarantined += 1
            summary.rows.append(row)
            if progress:
                progress(position, len(pairs), row)
    finally:
        engine.close()
    if write_manifest_file:
        merge_into_manifest(summary.rows, manifest_path, aset.anatomy_names)
    summary.seconds = time.perf_counter() - started
    return summary
