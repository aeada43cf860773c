"""The ``segment`` stage: volumes -> ``masks/<study_id>.nii.gz`` + ``segments.parquet`` (+ ``qc/*.png``).

Entry point: :class:`SegmentJob` (``SegmentJob.from_config(config, **cli_overrides)``) +
:func:`run_segment` -> :class:`SegmentSummary`; file names from :mod:`core.layout`.

One backend instance (warm model) serves a whole batch, and stays warm in its process for the next batch
with the same backend configuration (:func:`warm_backend`): a Dask worker (or the flow process of the
threads runner) loads its TotalSegmentator predictor once, not once per batch. Per study: hash the input volume; skip it
when the manifest already holds an ok row with the same input hash and backend configuration and the
mask (and QC picture) exist; otherwise segment, write the mask atomically (uint8 TotalSegmentator ids
on the volume's exact grid and affine), compute per-anatomy statistics and write the QC picture. A bad
study is quarantined with its reason; it never stops the cohort.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from core import layout
from core.batches import ItemOutcome, MapBatches
from core.records import NOT_STORED, Float32, Int32, arrow_fields

if TYPE_CHECKING:  # pragma: no cover
    from core.config import FvlmConfig

LOGGER = logging.getLogger("fvlm.segment")
STAGE_VERSION = "segment-1"
BackendName = Literal["precomputed", "totalsegmentator"]
Progress = Callable[[int, int, dict[str, Any]], None]


class SegmentBackend(Protocol):
    """What :func:`segment_batch` needs from a backend."""

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
    study_seconds: list[float] = field(default_factory=list)  # segmented (not reused) studies only

    @property
    def ok(self) -> bool:
        return self.n_quarantined == 0

    def text(self) -> str:
        per_study = (sum(self.study_seconds) / len(self.study_seconds)) if self.study_seconds else 0.0
        lines = [
            f"segment: {len(self.rows)} studies: {self.n_ok} ok ({self.n_reused} unchanged, reused), "
            f"{self.n_quarantined} quarantined; {self.seconds:.1f} s"
            + (f", {per_study:.2f} s per segmented study" if self.study_seconds else "")
        ]
        for row in self.rows:
            if row["status"] != "ok":
                lines.append(f"  quarantined {row['study_id']}: {row['reason']}")
            elif row.get("missing_anatomies"):
                lines.append(f"  warning {row['study_id']}: missing anatomies {', '.join(row['missing_anatomies'])}")
        if self.manifest_path:
            lines.append(f"manifest: {self.manifest_path}")
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class SegmentJob:
    """The segment stage: what to read, where to write, which backend (build it with :meth:`from_config`).

    ``inputs``: a convert output folder (``studies.parquet`` + ``volumes/``), a folder of volumes, or
    (study_id, volume path) pairs. ``roi_subset``: True -> the anatomy set's classes, a list -> those.
    """

    inputs: Path | tuple[tuple[str, Path], ...]
    output_dir: Path
    backend: BackendName = "precomputed"
    anatomy_set: str = "ctrate4"
    mode: Literal["fast", "full", "fastest"] = "fast"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    roi_subset: bool | tuple[str, ...] = True
    roi_subset_robust: bool = True
    precomputed_dir: Path | None = None
    salt: str | None = None
    pseudonym_length: int = 16
    totalseg_home: Path | None = None
    qc: bool = True
    force: bool = False

    @classmethod
    def from_config(
        cls,
        config: FvlmConfig,
        *,
        input_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        backend: BackendName | None = None,
        precomputed_dir: str | os.PathLike[str] | None = None,
        anatomy_set: str | None = None,
        mode: Literal["fast", "full", "fastest"] | None = None,
        device: Literal["auto", "cpu", "gpu"] | None = None,
        roi_subset: bool | None = None,
        qc: bool | None = None,
        force: bool | None = None,
    ) -> SegmentJob:
        """The job of ``config`` (paths.converted -> paths.segmented, segment.*, privacy.*); a ``None``
        override keeps the configured value."""
        from core.config import or_config

        section = config.segment
        return cls(
            inputs=config.path(or_config(input_dir, config.paths.converted)),
            output_dir=config.path(or_config(output_dir, config.paths.segmented)),
            backend=or_config(backend, section.backend),
            anatomy_set=or_config(anatomy_set, section.anatomy_set),
            mode=or_config(mode, section.mode),
            device=or_config(device, section.device),
            roi_subset=or_config(roi_subset, section.roi_subset),
            roi_subset_robust=section.roi_subset_robust,
            precomputed_dir=config.path(or_config(precomputed_dir, config.paths.precomputed_masks)),
            salt=config.privacy.salt,
            pseudonym_length=config.privacy.pseudonym_length,
            totalseg_home=config.path(section.totalseg_home) if section.totalseg_home else None,
            qc=or_config(qc, section.qc_pictures),
            force=or_config(force, False),
        )

    def uses_gpu(self) -> bool:
        """Whether this job's backend runs on a GPU (batches then hold the GPU concurrency slot)."""
        if self.backend != "totalsegmentator" or self.device == "cpu":
            return False
        if self.device == "gpu":
            return True
        try:
            import torch

            return bool(torch.cuda.is_available())
        except Exception:
            return False

    def fatal_errors(self) -> tuple[type[BaseException], ...]:
        """Stage-level errors that end the whole run instead of failing each study (missing weights)."""
        if self.backend != "totalsegmentator":
            return ()
        from segmentation.totalseg import WeightsMissingError

        return (WeightsMissingError, FileNotFoundError)

    def make_backend(self) -> SegmentBackend:
        aset = _anatomy_set(self.anatomy_set)
        subset: list[Any] | None
        if self.roi_subset is True:
            subset = sorted({c for a in aset.anatomies for c in a.classes})
        else:
            subset = list(self.roi_subset) if self.roi_subset else None
        return make_backend(
            self.backend,
            mode=self.mode,
            device=self.device,
            roi_subset=subset,
            roi_subset_robust=self.roi_subset_robust,
            precomputed_dir=self.precomputed_dir,
            salt=self.salt,
            pseudonym_length=self.pseudonym_length,
            totalseg_home=self.totalseg_home,
        )


def _anatomy_set(name: str) -> Any:
    from core.anatomy_sets import load_anatomy_set

    return load_anatomy_set(name)


# ---------------------------------------------------------------------------------------------- inputs
def collect_inputs(
    inputs: str | os.PathLike[str] | Sequence[tuple[str, str | os.PathLike[str]]],
) -> list[tuple[str, Path]]:
    """(study_id, volume path) pairs from a convert output folder, a folder of volumes, or a list.

    A folder with ``studies.parquet`` (the convert stage's manifest) yields its ``status == ok`` rows
    with the volume the manifest records (``core.layout.resolve_volume``); otherwise every NIfTI in
    ``volumes/`` or the folder itself.
    """
    if not isinstance(inputs, (str, os.PathLike)):
        return [(str(study_id), Path(path)) for study_id, path in inputs]
    folder = Path(inputs)
    if not folder.is_dir():
        raise FileNotFoundError(f"segment input folder not found: {folder}")
    manifest = layout.converted_manifest(folder)
    if manifest.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(manifest)
        columns = [c for c in ("study_id", "status", "volume_path") if c in table.column_names]
        pairs = []
        for row in table.select(columns).to_pylist():
            if row["status"] == "ok":
                study_id = row["study_id"]
                path = layout.resolve_volume(folder, study_id, row.get("volume_path"))
                pairs.append((study_id, path or layout.volume_path(folder, study_id)))
        return pairs
    volumes = folder / layout.VOLUMES_DIR if (folder / layout.VOLUMES_DIR).is_dir() else folder
    return [
        (layout.nifti_stem(path.name), path)
        for path in sorted(volumes.iterdir())
        if path.name.endswith(layout.NIFTI_EXTENSIONS) and not path.name.startswith(".")
    ]


# ---------------------------------------------------------------------------------------------- manifest
@dataclass
class SegmentRow:
    """The columns of one study's ``segments.parquet`` row (the stage builds rows as dicts of these names),
    followed by :class:`AnatomyColumns` for each anatomy of the set; the schema is derived from both."""

    study_id: str
    status: str  # ok | quarantined
    reason: str
    backend: str
    model_id: str
    anatomy_set: str
    config_hash: str
    input_sha256: str
    mask_path: str | None
    mask_sha256: str | None
    qc_path: str | None
    shape: list[Int32]
    spacing_mm: list[Float32]
    classes_present: list[Int32]
    missing_anatomies: list[str]
    cut_anatomies: list[str]
    missing_classes: list[str]
    warnings: list[str]
    # not stored (NOT_STORED: no column): timings and reuse would make the DVC-tracked manifest differ run to run
    seconds: Float32 = field(metadata=NOT_STORED)
    reused: bool = field(metadata=NOT_STORED)
    stage_version: str


@dataclass
class AnatomyColumns:
    """The per-anatomy columns ``<anatomy>_<field>`` of a :class:`SegmentRow`."""

    voxels: int
    volume_ml: Float32
    bbox_zyx: list[Int32] | None  # (z0, y0, x0, z1, y1, x1), ends exclusive
    cut_by_fov: bool | None  # None: anatomy absent
    touches: list[str]


def manifest_schema(anatomy_names: Sequence[str]) -> Any:
    """``segments.parquet``'s schema: :class:`SegmentRow`, then :class:`AnatomyColumns` per anatomy."""
    import pyarrow as pa

    columns = arrow_fields(SegmentRow)
    for name in anatomy_names:
        columns += arrow_fields(AnatomyColumns, prefix=f"{name}_")
    return pa.schema(
        columns,
        metadata={
            b"fvlm.stage": STAGE_VERSION.encode(),
            b"fvlm.axes": b"bbox_zyx = (z0, y0, x0, z1, y1, x1), ends exclusive, RAS canonical volume as (z, y, x)",
            b"fvlm.anatomies": json.dumps(list(anatomy_names)).encode(),
        },
    )


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


def make_backend(
    backend: str | SegmentBackend,
    *,
    mode: str = "fast",
    device: str = "auto",
    roi_subset: list[str] | None = None,
    roi_subset_robust: bool = True,
    precomputed_dir: str | os.PathLike[str] | None = None,
    salt: str | None = None,
    pseudonym_length: int = 16,
    totalseg_home: str | os.PathLike[str] | None = None,
) -> SegmentBackend:
    if not isinstance(backend, str):
        return backend
    if backend == "precomputed":
        if precomputed_dir is None or salt is None:
            raise ValueError("the precomputed backend needs precomputed_dir and salt")
        from segmentation.precomputed import PrecomputedBackend

        return PrecomputedBackend(precomputed_dir, salt=salt, pseudonym_length=pseudonym_length)
    if backend == "totalsegmentator":
        from segmentation.totalseg import TotalSegmentatorBackend

        return TotalSegmentatorBackend(
            mode=mode, device=device, roi_subset=roi_subset, roi_subset_robust=roi_subset_robust, home_dir=totalseg_home
        )
    raise ValueError(f"unknown segmentation backend {backend!r}; use precomputed or totalsegmentator")


def _config_hash(fingerprint: dict[str, Any], anatomy_set: str, qc: bool) -> str:
    payload = json.dumps({**fingerprint, "anatomy_set": anatomy_set, "stage": STAGE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------- per study
def _segment_one(
    backend: SegmentBackend,
    study_id: str,
    volume_path: Path,
    output_dir: Path,
    aset: Any,
    qc: bool,
    base_row: dict[str, Any],
) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np

    from core.io import atomic_path, sha256_file
    from segmentation.model_grid import canonical_zyx
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
    mask_path = layout.mask_path(output_dir, study_id)
    mask_image = nib.Nifti1Image(ids, image.affine)
    mask_image.set_qform(image.affine, code=1)
    mask_image.set_sform(image.affine, code=1)
    mask_image.header.set_xyzt_units("mm", "sec")
    with atomic_path(mask_path) as tmp:
        nib.save(mask_image, str(tmp))

    hu_zyx, ids_zyx, canonical_affine = canonical_zyx(image, ids, None)
    _, index_zyx, _ = canonical_zyx(image, ids, None, lookup=aset.lookup_table())  # lookup on stored order
    spacing_zyx = tuple(float(v) for v in np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0))[::-1])
    class_counts = label_counts(ids)
    stats = anatomy_stats(ids_zyx, aset, spacing_zyx, class_counts=class_counts, anatomy_index_zyx=index_zyx)
    row = dict(base_row)
    row.update(
        {
            "status": "ok",
            "reason": None,
            "mask_path": layout.mask_relpath(study_id),
            "mask_sha256": sha256_file(mask_path),
            "shape": [int(v) for v in image.shape],
            "spacing_mm": [float(v) for v in image.header.get_zooms()[:3]],
            "classes_present": [int(v) for v in np.flatnonzero(class_counts) if v > 0],
            "missing_anatomies": [n for n, s in stats.items() if not s.present],
            "cut_anatomies": [n for n, s in stats.items() if s.cut_by_fov],
            "missing_classes": sorted({c for s in stats.values() for c in s.missing_classes}),
        }
    )
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

        qc_path = output_dir / layout.qc_relpath(study_id)
        write_qc_png(
            hu_zyx,
            index_zyx,
            aset.anatomy_names,
            spacing_zyx,
            qc_path,
            title=f"{study_id}  [{base_row['model_id']}]"
            if base_row["model_id"] != base_row["backend"]
            else f"{study_id}  [{base_row['backend']}]",
            voxel_counts={n: s.voxels for n, s in stats.items()},
        )
        row["qc_path"] = layout.qc_relpath(study_id)
    row["warnings"] = warnings
    return row


def _reusable(previous: dict[str, Any] | None, input_sha256: str, config_hash: str, output_dir: Path, qc: bool) -> bool:
    if not previous or previous.get("status") != "ok":
        return False
    if previous.get("input_sha256") != input_sha256 or previous.get("config_hash") != config_hash:
        return False
    if not previous.get("mask_path") or not (output_dir / previous["mask_path"]).is_file():
        return False
    return not qc or bool(previous.get("qc_path") and (output_dir / previous["qc_path"]).is_file())


# ------------------------------------------------------------------------------------------ warm backends
# Idle warm backends of this process by configuration. A batch checks one out (or builds one) and puts it back
# when it ends, so concurrent batches of one process (threads runner) never share a predictor, and a process
# that runs one batch at a time (a Dask worker started with --nthreads 1) keeps exactly one per configuration.
_IDLE_BACKENDS: dict[tuple[Any, ...], list[SegmentBackend]] = {}
_IDLE_LOCK = threading.Lock()
_WARM_STATS = {"built": 0, "reused": 0, "dropped": 0}


def _warm_key(job: SegmentJob) -> tuple[Any, ...] | None:
    """What a warm backend depends on (None: a backend not worth keeping, e.g. precomputed masks: its index of
    the masks folder must be read again each batch)."""
    if job.backend != "totalsegmentator":
        return None
    roi = job.roi_subset if isinstance(job.roi_subset, bool) else tuple(job.roi_subset)
    weights = os.environ.get("TOTALSEG_WEIGHTS_PATH"), os.environ.get("TOTALSEG_HOME_DIR")
    home = str(job.totalseg_home) if job.totalseg_home else None
    return (job.backend, job.mode, job.device, roi, job.roi_subset_robust, job.anatomy_set, home, weights)


@contextlib.contextmanager
def warm_backend(job: SegmentJob) -> Iterator[SegmentBackend]:
    """The job's backend, kept warm in this process across batches (see ``_IDLE_BACKENDS``); a backend whose
    weights changed on disk since it was loaded is dropped, and one whose batch raised is closed, not kept."""
    key = _warm_key(job)
    engine: SegmentBackend | None = None
    if key is not None:
        with _IDLE_LOCK:
            idle = _IDLE_BACKENDS.get(key)
            engine = idle.pop() if idle else None
        if engine is not None and not _still_current(engine):
            engine.close()
            engine = None
            _count("dropped")
    if engine is None:
        engine = job.make_backend()
        _count("built")
    else:
        _count("reused")
    try:
        yield engine
    except BaseException:
        engine.close()
        raise
    if key is None:
        engine.close()
    else:
        with _IDLE_LOCK:
            _IDLE_BACKENDS.setdefault(key, []).append(engine)


def _count(name: str) -> None:
    with _IDLE_LOCK:
        _WARM_STATS[name] += 1


def _still_current(engine: SegmentBackend) -> bool:
    is_current = getattr(engine, "is_current", None)
    try:
        return bool(is_current()) if callable(is_current) else True
    except Exception:  # weights gone: a fresh backend reports it the usual way
        return False


def release_warm_backends() -> int:
    """Close every idle warm backend of this process (frees its model / GPU memory); returns how many."""
    with _IDLE_LOCK:
        engines = [engine for idle in _IDLE_BACKENDS.values() for engine in idle]
        _IDLE_BACKENDS.clear()
    for engine in engines:
        engine.close()
    return len(engines)


def warm_backend_stats() -> dict[str, int]:
    """This process's warm-backend counters: backends built, batches that reused one, stale ones dropped, and
    the idle ones held now (tests and the cluster docs read them on each Dask worker with ``client.run``)."""
    with _IDLE_LOCK:
        idle = sum(len(engines) for engines in _IDLE_BACKENDS.values())
    return {**_WARM_STATS, "idle": idle, "pid": os.getpid()}


def segment_batch(
    pairs: list[tuple[str, Path]], job: SegmentJob, progress: Progress | None = None
) -> list[ItemOutcome]:
    """Batch function: one (warm) backend segments the batch; quarantined studies come back as outcomes.

    Raises only for stage-level problems (unknown backend, missing weights / masks folder).
    """
    from core.io import sha256_file

    out = Path(job.output_dir)
    aset = _anatomy_set(job.anatomy_set)
    previous = read_manifest(layout.segments_manifest(out))
    outcomes: list[ItemOutcome] = []
    loaded = False
    with warm_backend(job) as engine:
        if pairs and hasattr(engine, "index"):
            engine.index()  # precomputed: a missing masks folder stops the stage, not each study
        for position, (study_id, volume_path) in enumerate(pairs, start=1):
            volume_path = Path(volume_path)
            tick = time.perf_counter()
            base_row: dict[str, Any] = {
                "study_id": study_id,
                "backend": engine.name,
                "anatomy_set": aset.name,
                "stage_version": STAGE_VERSION,
                "reused": False,
                "warnings": [],
            }
            try:
                if not volume_path.is_file():
                    raise FileNotFoundError(f"volume file missing: {volume_path.name}")
                base_row["input_sha256"] = sha256_file(volume_path)
                base_row["model_id"] = engine.model_id
                base_row["config_hash"] = _config_hash(engine.config_fingerprint(study_id), aset.name, job.qc)
                prior = previous.get(study_id)
                if (
                    not job.force
                    and prior is not None
                    and _reusable(prior, base_row["input_sha256"], base_row["config_hash"], out, job.qc)
                ):
                    row = {**prior, "reused": True}
                else:
                    if not loaded:
                        engine.load()
                        loaded = True
                    row = _segment_one(engine, study_id, volume_path, out, aset, job.qc, base_row)
                    row["seconds"] = round(time.perf_counter() - tick, 3)
            except Exception as error:  # noqa: BLE001 - quarantine the study, go on with the cohort
                from segmentation.totalseg import WeightsMissingError

                if isinstance(error, WeightsMissingError):
                    raise
                reason = f"{type(error).__name__}: {error}"
                LOGGER.debug("study %s quarantined: %s", study_id, reason)  # the summary lists it once
                row = {
                    **base_row,
                    "status": "quarantined",
                    "reason": reason,
                    "seconds": round(time.perf_counter() - tick, 3),
                }
            outcomes.append(_outcome(row, out))
            if progress:
                progress(position, len(pairs), row)
    return outcomes


def _outcome(row: dict[str, Any], out: Path) -> ItemOutcome:
    if row.get("status") == "ok":
        status, reason = ("skipped", "unchanged (reused)") if row.get("reused") else ("ok", "")
    else:
        status, reason = "quarantined", str(row.get("reason", ""))
    qc = row.get("qc_path")
    return ItemOutcome(
        row["study_id"],
        status,
        reason,  # type: ignore[arg-type]
        qc_path=str(out / qc) if qc else None,
        payload=row,
    )


def run_segment(
    job: SegmentJob, map_batches: MapBatches | None = None, *, progress: Progress | None = None
) -> SegmentSummary:
    """The segment stage: segment every input study (reusing unchanged ones), then merge this run's rows
    into ``segments.parquet`` atomically (studies this run did not touch keep their row).

    ``map_batches``: how batches of studies run (default: all in one batch, one warm backend, counted on
    a progress bar (core/progress.py) and ``progress(position, total, row)`` after each study; the Prefect
    flow passes its task fan-out, which counts finished batches).
    Raises only for stage-level problems; study-level problems become quarantined rows.
    """
    started = time.perf_counter()
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from core.io import remove_stale_tmp_files

    remove_stale_tmp_files(out)  # a killed run's half-written masks, before DVC tracks the folder
    aset = _anatomy_set(job.anatomy_set)
    pairs = collect_inputs(job.inputs)
    if map_batches is None:
        from core.progress import progress as progress_bar

        with progress_bar(len(pairs), "segment", "studies") as bar:

            def tick(position: int, total: int, row: dict[str, Any]) -> None:
                bar.advance()
                if progress is not None:
                    progress(position, total, row)

            outcomes = segment_batch(pairs, job, tick)
    else:
        outcomes = map_batches(pairs, functools.partial(segment_batch, job=job), operator.itemgetter(0))
    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.payload is not None:
            rows.append(outcome.payload)
        elif outcome.status == "failed":
            rows.append(
                {
                    "study_id": outcome.key,
                    "status": "quarantined",
                    "backend": job.backend,
                    "anatomy_set": job.anatomy_set,
                    "reason": outcome.reason,
                    "reused": False,
                    "warnings": [],
                }
            )
    manifest_path = merge_into_manifest(rows, layout.segments_manifest(out), aset.anatomy_names)
    summary = SegmentSummary(rows=rows, manifest_path=manifest_path, seconds=0.0)
    summary.n_reused = sum(1 for row in rows if row.get("reused"))
    summary.n_ok = sum(1 for row in rows if row.get("status") == "ok")
    summary.n_quarantined = len(rows) - summary.n_ok
    summary.study_seconds = [
        float(r["seconds"])
        for r in rows
        if r.get("status") == "ok" and not r.get("reused") and r.get("seconds") is not None
    ]
    summary.seconds = time.perf_counter() - started
    return summary
