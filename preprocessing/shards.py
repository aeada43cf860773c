"""``fvlm shard``: converted volumes + anatomy masks + parsed reports -> Parquet shards.

Entry point: :class:`ShardJob` (``ShardJob.from_config(config, **cli_overrides)``) + :func:`run_shard`
-> :class:`ShardSummary`. Inputs (the stage layouts of :mod:`core.layout`):

* ``CONVERTED/studies.parquet`` (rows with ``status == "ok"``) + the volume each row records in
  ``volume_path`` (``volumes/<study_id>.nii.gz`` or ``.nii``)
* ``SEGMENTED/masks/<study_id>.nii.gz``: TotalSegmentator ``total`` ids on the volume's exact grid
* ``REPORTS.parquet`` (long table: study_id, anatomy, text, abnormal) + ``REPORTS.studies.parquet``
  (study_id, status, reason, report_text, the 18 CT-RATE label columns)

Output: ``OUT/{train,val,test}/part-NNNNN.parquet`` (schema: :mod:`preprocessing.shard_schema`), rows
sorted by study_id, ``rows_per_group`` studies per row group, a new file once ``target_file_mb`` of
blobs are in one; ``OUT/manifest.json``; optional small metrics JSON.

Each study is prepared once (grouping TotalSegmentator ids into the anatomy set, ROI crop, resample to
the model spacing, zstd encode) into ``CACHE/<study_id>-<key>.npz`` where ``key`` hashes the
input files' contents and the preparation parameters; a rebuild with K new studies prepares only those
K and re-assembles the split files from the cache. Same inputs + config -> byte-identical shards.
``CACHE`` (:func:`shard_cache_dir`) lies outside OUT, under the project's ``.fvlm-cache/``: it holds
the file-hash memo (absolute paths, mtimes), which must never be part of the DVC-tracked output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import layout
from core.config import GridConfig, ShardConfig, SplitConfig
from core.io import atomic_path, atomic_write_text, sha256_file
from core.processes import die_with_parent
from preprocessing.shard_schema import (
    BLOB_COLUMNS,
    PREP_VERSION,
    SPLITS,
    build_metadata,
    encode_array,
    shard_schema,
)
from preprocessing.split import assign_split, split_problems

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from core.anatomy_sets import AnatomySet
    from core.config import FvlmConfig

log = logging.getLogger(__name__)

GRID_TOLERANCE_MM = 1e-3


# ----------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ReportRecord:
    status: str
    reason: str
    report_text: str
    labels: tuple[int, ...]
    anatomy_text: tuple[str, ...]
    anatomy_abnormal: tuple[bool, ...]


@dataclass(frozen=True)
class StudyInput:
    study_id: str
    patient_id: str
    volume_path: Path
    mask_path: Path
    source_hash: str


def load_reports(
    reports_table: str | os.PathLike[str], anatomy_names: Sequence[str], label_names: Sequence[str]
) -> dict[str, ReportRecord]:
    """study_id -> per-anatomy text / abnormal flags, labels (-1 unknown) and scrubbed report text."""
    import pyarrow.parquet as pq

    long_path = Path(reports_table)
    studies_path = layout.reports_studies_path(long_path)
    for path in (long_path, studies_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: reports table not found (run `fvlm parse-reports` first)")
    long_rows = pq.read_table(long_path, columns=["study_id", "anatomy", "text", "abnormal"]).to_pylist()
    per_anatomy: dict[str, dict[str, tuple[str, bool]]] = {}
    for row in long_rows:
        per_anatomy.setdefault(row["study_id"], {})[row["anatomy"]] = (
            row["text"] or "",
            bool(row["abnormal"]) if row["abnormal"] is not None else False,
        )
    studies_table = pq.read_table(studies_path)
    present = set(studies_table.column_names)
    missing = {"study_id", "report_text"} - present
    if missing:
        raise ValueError(f"{studies_path}: missing columns {sorted(missing)}")
    records: dict[str, ReportRecord] = {}
    for row in studies_table.to_pylist():
        labels = []
        for label in label_names:
            value = row.get(label) if label in present else None
            labels.append(-1 if value is None or value != value else int(value))  # None / NaN -> unknown
        texts = per_anatomy.get(row["study_id"], {})
        records[row["study_id"]] = ReportRecord(
            status=str(row.get("status") or "ok"),
            reason=str(row.get("reason") or ""),
            report_text=row.get("report_text") or "",
            labels=tuple(labels),
            anatomy_text=tuple(texts.get(name, ("", False))[0] for name in anatomy_names),
            anatomy_abnormal=tuple(texts.get(name, ("", False))[1] for name in anatomy_names),
        )
    return records


def load_converted_studies(
    converted_dir: str | os.PathLike[str], segmented_dir: str | os.PathLike[str]
) -> tuple[list[StudyInput], int]:
    """The converted studies with status ok (sorted by study_id) and the count of the others."""
    import pyarrow.parquet as pq

    converted = Path(converted_dir)
    manifest = layout.converted_manifest(converted)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: converted studies table not found (run `fvlm convert` first)")
    table = pq.read_table(manifest)
    for column in ("study_id", "patient_id", "status"):
        if column not in table.column_names:
            raise ValueError(f"{manifest}: missing column {column!r}")
    has_hash = "source_hash" in table.column_names
    has_volume_path = "volume_path" in table.column_names
    studies: list[StudyInput] = []
    not_ok = 0
    seen: set[str] = set()
    no_patient = 0
    for row in table.to_pylist():
        if row["status"] != "ok":
            not_ok += 1
            continue
        study_id = row["study_id"]
        if study_id in seen:
            raise ValueError(f"{manifest}: study_id {study_id} appears twice with status ok")
        seen.add(study_id)
        no_patient += not row["patient_id"]
        studies.append(
            StudyInput(
                study_id=study_id,
                # convert gives every study a patient (its own one without a PatientID); a manifest of an older
                # convert may not: the same rule, the study is its own patient (split by its study_id)
                patient_id=row["patient_id"] or study_id,
                volume_path=layout.resolve_volume(converted, study_id, row["volume_path"] if has_volume_path else None)
                or layout.volume_path(converted, study_id),
                mask_path=layout.mask_path(segmented_dir, study_id),
                source_hash=(row.get("source_hash") or "") if has_hash else "",
            )
        )
    if no_patient:
        log.warning(
            "%s: %d ok studies without patient_id (converted by an older fvlm): each is its own patient; "
            "re-run `fvlm convert` to record that in the manifest",
            manifest,
            no_patient,
        )
    studies.sort(key=lambda s: s.study_id)
    return studies, not_ok


# ------------------------------------------------------------------------------------ preparation
@dataclass(frozen=True)
class PrepParams:
    """Everything that changes the prepared arrays (part of the cache key and of the metadata)."""

    spacing_zyx_mm: tuple[float, float, float]
    roi_margin_slices: int
    roi_margin_voxels: int
    zstd_level: int
    anatomy_set: str
    lookup_table: tuple[int, ...]  # TotalSegmentator id -> anatomy index + 1

    def key_json(self) -> str:
        payload = {
            "prep_version": PREP_VERSION,
            "spacing_zyx_mm": list(self.spacing_zyx_mm),
            "roi_margin_slices": self.roi_margin_slices,
            "roi_margin_voxels": self.roi_margin_voxels,
            "zstd_level": self.zstd_level,
            "anatomy_set": self.anatomy_set,
            "lookup_table": list(self.lookup_table),
        }
        return json.dumps(payload, sort_keys=True)


def _load_xyz(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI's stored (x, y, z) array and affine; a clear error naming the file when unreadable."""
    import nibabel as nib
    import numpy as np

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel / gzip / zlib raise many types for a broken file
        detail = str(error).replace(str(path), path.name)  # no machine-specific paths in the manifest
        raise ValueError(f"{what} file {path.name} unreadable: {type(error).__name__}: {detail}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what} file {path.name} is {data.ndim}-D, expected 3-D")
    return data, np.asarray(image.affine, dtype=np.float64)


def prepare_study_arrays(volume_path: Path, mask_path: Path, params: PrepParams) -> Any:
    """Load, check the mask lies on the volume's grid, then ``segmentation.model_grid.prepare_model_grid``
    (RAS canonical, (z, y, x), TotalSegmentator ids -> anatomy index, ROI crop + margins, resample).

    Returns :class:`segmentation.model_grid.ModelGrid` (hu_zyx int16, anatomy_index_zyx uint8, spacing, affine).
    """
    import numpy as np

    from segmentation.model_grid import prepare_model_grid

    hu_xyz, volume_affine = _load_xyz(volume_path, "volume")
    ids_xyz, mask_affine = _load_xyz(mask_path, "mask")
    if ids_xyz.shape != hu_xyz.shape:
        raise ValueError(f"mask grid {ids_xyz.shape} differs from volume grid {hu_xyz.shape} (x, y, z)")
    if not np.allclose(mask_affine, volume_affine, atol=GRID_TOLERANCE_MM):
        raise ValueError("mask affine differs from volume affine (mask not on the volume's grid)")
    if not np.issubdtype(ids_xyz.dtype, np.integer):
        rounded = np.rint(ids_xyz)
        if not np.array_equal(rounded, ids_xyz):
            raise ValueError("mask holds non-integer values (not a label map)")
        ids_xyz = rounded.astype(np.int32)
    if ids_xyz.min(initial=0) < 0:
        raise ValueError("mask holds negative label ids")
    return prepare_model_grid(
        hu_xyz,
        ids_xyz,
        params.anatomy_set,
        params.spacing_zyx_mm,
        params.roi_margin_slices,
        params.roi_margin_voxels,
        affine=volume_affine,
    )


def _write_cache_entry(cache_file: Path, arrays: Any, zstd_level: int, n_anatomies: int) -> None:
    import numpy as np

    anatomy_voxels = np.bincount(arrays.anatomy_index_zyx.ravel(), minlength=n_anatomies + 1)[1 : n_anatomies + 1]
    with atomic_path(cache_file) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                volume_blob=np.frombuffer(encode_array(arrays.hu_zyx, zstd_level), dtype=np.uint8),
                mask_blob=np.frombuffer(encode_array(arrays.anatomy_index_zyx, zstd_level), dtype=np.uint8),
                shape=np.asarray(arrays.hu_zyx.shape, dtype=np.int32),
                spacing_mm=np.asarray(arrays.spacing_zyx, dtype=np.float32),
                affine=np.asarray(arrays.affine, dtype=np.float64).reshape(16),
                anatomy_voxels=anatomy_voxels.astype(np.int64),
            )


def _prepare_job(job: tuple[str, str, str, str, PrepParams, int]) -> tuple[str, str | None]:
    """Process-pool entry: prepare one study into its cache file; returns (study_id, error or None)."""
    study_id, volume_path, mask_path, cache_file, params, n_anatomies = job
    try:
        arrays = prepare_study_arrays(Path(volume_path), Path(mask_path), params)
        _write_cache_entry(Path(cache_file), arrays, params.zstd_level, n_anatomies)
    except Exception as error:  # one bad study must not stop the cohort
        return study_id, f"prepare failed: {error}"
    return study_id, None


@dataclass(frozen=True)
class CachedStudy:
    volume_blob: bytes
    mask_blob: bytes
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    affine: tuple[float, ...]
    anatomy_voxels: tuple[int, ...]


def read_cache_entry(cache_file: Path) -> CachedStudy:
    import numpy as np

    with np.load(cache_file) as data:
        return CachedStudy(
            volume_blob=data["volume_blob"].tobytes(),
            mask_blob=data["mask_blob"].tobytes(),
            shape=tuple(int(v) for v in data["shape"]),
            spacing_mm=tuple(float(v) for v in data["spacing_mm"]),
            affine=tuple(float(v) for v in data["affine"]),
            anatomy_voxels=tuple(int(v) for v in data["anatomy_voxels"]),
        )


class _HashMemo:
    """File content hashes, memoised on (absolute path, size, mtime_ns) in ``CACHE/file-hashes.json``
    (machine-specific: it lives in the shard cache outside the DVC-tracked output)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, list[Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.used: dict[str, list[Any]] = {}

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        cached = self.entries.get(key)
        if cached and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            digest = str(cached[2])
        else:
            digest = sha256_file(file)
        self.used[key] = [stat.st_size, stat.st_mtime_ns, digest]
        return digest

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.used, sort_keys=True))


# ---------------------------------------------------------------------------------------- writing
@dataclass
class ShardSummary:
    out_dir: Path
    studies: dict[str, int]  # split -> rows written
    patients: dict[str, int]  # split -> distinct patients
    files: list[str]  # shard files, relative to out_dir
    quarantined: list[dict[str, str]]  # {study_id, reason}
    upstream_not_ok: int  # studies convert did not pass (not re-listed)
    prepared: int  # studies prepared in this run
    reused: int  # studies taken from the cache
    content_hash: str
    manifest_path: Path
    abnormal_rate: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the split leaves unusable (names the params keys)

    @property
    def written(self) -> int:
        return sum(self.studies.values())

    def describe(self) -> str:
        per_split = ", ".join(f"{name} {self.studies.get(name, 0)}" for name in SPLITS)
        return (
            f"shards: {self.written} studies ({per_split}) in {len(self.files)} files; "
            f"{len(self.quarantined)} quarantined, {self.upstream_not_ok} not ok upstream; "
            f"prepared {self.prepared}, from cache {self.reused}; content {self.content_hash[:12]}"
            + "".join(f"\n  warning: {warning}" for warning in self.warnings)
        )


@dataclass(frozen=True)
class _Row:
    study: StudyInput
    split: str
    report: ReportRecord
    cache_file: Path


def _row_batches(rows: Sequence[_Row], size: int) -> Iterator[Sequence[_Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _table_for(rows: Sequence[_Row], schema: Any, prep_version: str) -> tuple[Any, int, list[CachedStudy]]:
    import pyarrow as pa

    cached = [read_cache_entry(row.cache_file) for row in rows]
    columns: dict[str, list[Any]] = {
        "study_id": [r.study.study_id for r in rows],
        "patient_id": [r.study.patient_id for r in rows],
        "split": [r.split for r in rows],
        "volume": [c.volume_blob for c in cached],
        "shape": [list(c.shape) for c in cached],
        "spacing_mm": [list(c.spacing_mm) for c in cached],
        "affine": [list(c.affine) for c in cached],
        "mask": [c.mask_blob for c in cached],
        "anatomy_text": [list(r.report.anatomy_text) for r in rows],
        "anatomy_abnormal": [list(r.report.anatomy_abnormal) for r in rows],
        "labels": [list(r.report.labels) for r in rows],
        "report_text": [r.report.report_text for r in rows],
        "prep_version": [prep_version] * len(rows),
        "source_hash": [r.study.source_hash for r in rows],
    }
    blob_bytes = sum(len(c.volume_blob) + len(c.mask_blob) for c in cached)
    return pa.Table.from_pydict(columns, schema=schema), blob_bytes, cached


def open_writer(path: Path, schema: Any) -> Any:
    import pyarrow.parquet as pq

    small_columns = [name for name in schema.names if name not in BLOB_COLUMNS]
    return pq.ParquetWriter(
        str(path),
        schema,
        compression={name: ("NONE" if name in BLOB_COLUMNS else "ZSTD") for name in schema.names},
        use_dictionary=small_columns,
        write_statistics=small_columns,
        version="2.6",
    )


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _write_split(
    split_dir: Path, rows: Sequence[_Row], schema: Any, rows_per_group: int, target_bytes: float
) -> list[tuple[Path, Path]]:
    """Write a split's rows into hidden temp files; returns (temp, final) pairs to rename later."""
    pending: list[tuple[Path, Path]] = []
    writer = None
    file_bytes = 0
    try:
        for batch in _row_batches(rows, rows_per_group):
            if writer is None:
                final = split_dir / f"part-{len(pending):05d}.parquet"
                tmp = _tmp_name(final)
                pending.append((tmp, final))
                writer = open_writer(tmp, schema)
                file_bytes = 0
            table, blob_bytes, _ = _table_for(batch, schema, PREP_VERSION)
            writer.write_table(table, row_group_size=len(batch))
            file_bytes += blob_bytes
            if file_bytes >= target_bytes:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()
            writer = None
    except BaseException:
        if writer is not None:
            writer.close()
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    return pending


def _clean_stale_temps(out_dir: Path) -> None:
    for split in SPLITS:
        for stale in (out_dir / split).glob(".part-*.tmp-*"):
            stale.unlink(missing_ok=True)


def _commit(pending: list[tuple[Path, Path]], out_dir: Path) -> list[str]:
    """Rename all temp files into place, then drop part files of an older, longer build."""
    for tmp, final in pending:
        os.replace(tmp, final)
    keep = {final for _, final in pending}
    for split in SPLITS:
        for old in layout.shard_parts(out_dir, split):
            if old not in keep:
                old.unlink()
    return sorted(str(final.relative_to(out_dir)) for final in keep)


def _content_hash(out_dir: Path, files: Iterable[str]) -> tuple[str, dict[str, str]]:
    per_file = {name: sha256_file(out_dir / name) for name in sorted(files)}
    digest = hashlib.sha256()
    for name, file_hash in per_file.items():
        digest.update(f"{name}\0{file_hash}\n".encode())
    return digest.hexdigest(), per_file


def _lookup_tuple(anatomy_set: AnatomySet) -> tuple[int, ...]:
    return tuple(int(v) for v in anatomy_set.lookup_table())


@dataclass(frozen=True)
class ShardJob:
    """The shard stage: the three upstream outputs, where to write, how (build it with :meth:`from_config`)."""

    converted_dir: Path
    segmented_dir: Path
    reports_table: Path
    out_dir: Path
    _: KW_ONLY
    anatomy_set: str = "ctrate4"
    grid: GridConfig = GridConfig()
    split: SplitConfig = SplitConfig()
    shard: ShardConfig = ShardConfig()
    metrics_path: Path | None = None
    workers: int | None = None  # preparation processes; None: shard.workers
    cache_dir: Path | None = None  # prepared studies + hash memo; None: shard_cache_dir(out_dir.parent, out_dir)
    train_batch_size: int | None = None  # only to warn when train holds less than one batch (train.batch_size)

    @classmethod
    def from_config(
        cls,
        config: FvlmConfig,
        *,
        converted_dir: str | os.PathLike[str] | None = None,
        segmented_dir: str | os.PathLike[str] | None = None,
        reports_table: str | os.PathLike[str] | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        metrics_path: str | os.PathLike[str] | None = None,
        workers: int | None = None,
    ) -> ShardJob:
        """The job of ``config`` (paths.*, segment.anatomy_set, grid / split / shard); a ``None`` override
        keeps the configured value (metrics: ``<paths.metrics>/shard.json``)."""
        from core.config import or_config

        out = config.path(or_config(out_dir, config.paths.shards))
        return cls(
            config.path(or_config(converted_dir, config.paths.converted)),
            config.path(or_config(segmented_dir, config.paths.segmented)),
            config.path(or_config(reports_table, config.paths.reports_table)),
            out,
            anatomy_set=config.segment.anatomy_set,
            grid=config.grid,
            split=config.split,
            shard=config.shard,
            metrics_path=config.path(or_config(metrics_path, Path(config.paths.metrics) / "shard.json")),
            workers=or_config(workers, config.shard.workers),
            cache_dir=shard_cache_dir(config.root, out),
            train_batch_size=config.train.batch_size,
        )


def shard_cache_dir(project_root: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """``<project_root>/.fvlm-cache/shard/<out name>-<hash of the out path relative to the root>``: outside the
    output (a DVC out), one per output folder (each build prunes its cache to its own studies). An output
    outside the project keeps its cache beside it (``<out parent>/.fvlm-cache/shard/...``)."""
    root, out = Path(project_root).resolve(), Path(out_dir).resolve()
    if not out.is_relative_to(root):
        root = out.parent
    label = out.relative_to(root).as_posix()
    return layout.stage_cache_dir(root, "shard") / f"{out.name}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"


def run_shard(job: ShardJob) -> ShardSummary:
    """Build (or incrementally rebuild) the shards; see the module docstring for the layout."""
    from core.anatomy_sets import CTRATE_LABELS, load_anatomy_set

    anatomies = load_anatomy_set(job.anatomy_set)
    grid, split, shard = job.grid, job.split, job.shard
    anatomy_names = list(anatomies.anatomy_names)
    label_names = list(CTRATE_LABELS)
    out = Path(job.out_dir)
    cache_dir = Path(job.cache_dir) if job.cache_dir is not None else shard_cache_dir(out.parent, out)
    if cache_dir.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"shard cache {cache_dir} lies inside the shard output {out} (a DVC output); put it outside")
    cache_dir.mkdir(parents=True, exist_ok=True)
    legacy = out / layout.SHARD_CACHE_DIR  # older versions cached inside the output: it made the out machine-specific
    if legacy.is_dir():
        import shutil

        shutil.rmtree(legacy, ignore_errors=True)
    _clean_stale_temps(out)

    params = PrepParams(
        spacing_zyx_mm=tuple(float(v) for v in grid.spacing_zyx_mm),  # type: ignore[arg-type]
        roi_margin_slices=int(grid.roi_margin_slices),
        roi_margin_voxels=int(grid.roi_margin_voxels),
        zstd_level=int(shard.zstd_level),
        anatomy_set=anatomies.name,
        lookup_table=_lookup_tuple(anatomies),
    )
    params_hash = hashlib.sha256(params.key_json().encode()).hexdigest()

    studies, upstream_not_ok = load_converted_studies(job.converted_dir, job.segmented_dir)
    reports = load_reports(job.reports_table, anatomy_names, label_names)
    memo = _HashMemo(cache_dir / "file-hashes.json")

    quarantined: list[dict[str, str]] = []
    candidates: list[_Row] = []
    jobs: list[tuple[str, str, str, str, PrepParams, int]] = []
    for study in studies:
        reason = None
        report = reports.get(study.study_id)
        if not study.volume_path.is_file():
            reason = "no volume file"
        elif not study.mask_path.is_file():
            reason = "no mask (the segment stage quarantined the study or has not run on it)"
        elif report is None:
            reason = (
                "no report (no row of the reports table has this study's key in its reports.id_column; "
                "`fvlm lookup <study_id>` shows the key)"
            )
        elif report.status != "ok":
            reason = f"report {report.status}: {report.reason}".rstrip(": ")
        if reason is not None:
            quarantined.append({"study_id": study.study_id, "reason": reason})
            continue
        assert report is not None
        volume_hash = memo.sha256(study.volume_path)
        mask_hash = memo.sha256(study.mask_path)
        key = hashlib.sha256(f"{volume_hash}:{mask_hash}:{params_hash}".encode()).hexdigest()[:20]
        cache_file = cache_dir / f"{study.study_id}-{key}.npz"
        if not study.source_hash:
            study = StudyInput(study.study_id, study.patient_id, study.volume_path, study.mask_path, volume_hash)
        row_split = assign_split(study.patient_id, split.train, split.val, split.test, seed=split.seed)
        candidates.append(_Row(study, row_split, report, cache_file))
        if not cache_file.is_file():
            jobs.append(
                (
                    study.study_id,
                    str(study.volume_path),
                    str(study.mask_path),
                    str(cache_file),
                    params,
                    len(anatomy_names),
                )
            )
    memo.save()

    failures = _run_jobs(jobs, job.workers if job.workers is not None else job.shard.workers)
    rows: list[_Row] = []
    for row in candidates:
        if row.study.study_id in failures:
            quarantined.append({"study_id": row.study.study_id, "reason": failures[row.study.study_id]})
        else:
            rows.append(row)
    quarantined.sort(key=lambda item: item["study_id"])
    _prune_cache(cache_dir, {row.cache_file.name for row in rows})

    metadata = build_metadata(
        anatomy_set=anatomies.name,
        anatomy_names=anatomy_names,
        label_names=label_names,
        grid={
            "spacing_zyx_mm": list(params.spacing_zyx_mm),
            "roi_margin_slices": params.roi_margin_slices,
            "roi_margin_voxels": params.roi_margin_voxels,
            "resample": "linear image, nearest mask; ROI = union of anatomies + margins (model voxels)",
        },
        zstd_level=params.zstd_level,
    )
    schema = shard_schema(len(anatomy_names), len(label_names), metadata)
    target_bytes = float(shard.target_file_mb) * 1024 * 1024
    pending: list[tuple[Path, Path]] = []
    try:
        for split_name in SPLITS:
            split_rows = [row for row in rows if row.split == split_name]
            split_dir = layout.shard_split_dir(out, split_name)
            split_dir.mkdir(parents=True, exist_ok=True)
            pending += _write_split(split_dir, split_rows, schema, int(shard.rows_per_group), target_bytes)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    files = _commit(pending, out)
    content_hash, per_file = _content_hash(out, files)

    reused = len(rows) - (len(jobs) - len(failures))
    summary = _summarise(out, rows, anatomy_names, files, quarantined, upstream_not_ok, len(jobs), reused, content_hash)
    summary.warnings = split_problems(
        summary.studies,
        summary.patients,
        {"train": split.train, "val": split.val, "test": split.test},
        split.seed,
        job.train_batch_size,
    )
    for warning in summary.warnings:
        log.debug("shard: %s", warning)  # describe() prints each once
    manifest = {
        "format_version": metadata["format_version"],
        "prep_version": PREP_VERSION,
        "anatomy_set": anatomies.name,
        "anatomy_names": anatomy_names,
        "label_names": label_names,
        "splits": {
            name: {
                "studies": summary.studies[name],
                "patients": summary.patients[name],
                "abnormal_rate": _abnormal_rates([r for r in rows if r.split == name], anatomy_names),
            }
            for name in SPLITS
        },
        "abnormal_rate": summary.abnormal_rate,
        "split_ratios": {"train": split.train, "val": split.val, "test": split.test, "seed": split.seed},
        "quarantined": quarantined,
        "n_quarantined": len(quarantined),
        "upstream_not_ok": upstream_not_ok,
        "files": per_file,
        "content_hash": content_hash,
    }
    atomic_write_text(summary.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if job.metrics_path is not None:  # numbers in shard.json, the hash in shard.info.json (core/metrics_files.py)
        from core.metrics_files import write_metrics

        metrics = {
            "studies": summary.written,
            **{f"studies_{name}": summary.studies[name] for name in SPLITS},
            "quarantined": len(quarantined),
            "files": len(files),
        }
        write_metrics(job.metrics_path, metrics, {"content_hash": content_hash})
    log.debug(summary.describe())  # the command prints it (once); a flow puts it in its artifact
    return summary


def _run_jobs(jobs: list[tuple[str, str, str, str, PrepParams, int]], workers: int) -> dict[str, str]:
    failures: dict[str, str] = {}
    if not jobs:
        return failures
    from core.progress import progress

    log.debug("preparing %d studies with %d worker(s)", len(jobs), workers)
    with progress(len(jobs), "shard: prepare", "studies") as bar:
        if workers <= 1 or len(jobs) == 1:
            results: Iterable[tuple[str, str | None]] = map(_prepare_job, jobs)
            for study_id, error in results:
                _record(failures, study_id, error)
                bar.advance()
        else:
            import multiprocessing

            # forkserver, not fork: the caller may run threads (e.g. inside a Prefect flow) that fork() would copy
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("forkserver"), initializer=die_with_parent
            ) as pool:
                for study_id, error in pool.map(_prepare_job, jobs):
                    _record(failures, study_id, error)
                    bar.advance()
    return failures


def _record(failures: dict[str, str], study_id: str, error: str | None) -> None:
    if error is not None:
        failures[study_id] = error
        log.debug("study %s quarantined: %s", study_id, error)  # the summary lists it once


def _prune_cache(cache_dir: Path, keep: set[str]) -> None:
    for entry in cache_dir.glob("*.npz"):
        if entry.name not in keep:
            entry.unlink(missing_ok=True)


def _abnormal_rates(rows: Sequence[_Row], anatomy_names: Sequence[str]) -> dict[str, float | None]:
    if not rows:
        return {name: None for name in anatomy_names}
    return {
        name: round(sum(1 for r in rows if r.report.anatomy_abnormal[k]) / len(rows), 6)
        for k, name in enumerate(anatomy_names)
    }


def _summarise(
    out: Path,
    rows: Sequence[_Row],
    anatomy_names: Sequence[str],
    files: list[str],
    quarantined: list[dict[str, str]],
    upstream_not_ok: int,
    prepared: int,
    reused: int,
    content_hash: str,
) -> ShardSummary:
    studies = {name: sum(1 for r in rows if r.split == name) for name in SPLITS}
    patients = {name: len({r.study.patient_id for r in rows if r.split == name}) for name in SPLITS}
    return ShardSummary(
        out_dir=out,
        studies=studies,
        patients=patients,
        files=files,
        quarantined=quarantined,
        upstream_not_ok=upstream_not_ok,
        prepared=prepared,
        reused=reused,
        content_hash=content_hash,
        manifest_path=layout.shard_manifest(out),
        abnormal_rate={k: v for k, v in _abnormal_rates(rows, anatomy_names).items() if v is not None},
    )


def shard_files(shards_dir: str | os.PathLike[str], split: str) -> list[Path]:
    """The complete shard files of one split, in order (hidden temp files are never listed)."""
    return layout.shard_parts(shards_dir, split)
