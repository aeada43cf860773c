"""`fvlm convert` as a library: DICOM tree -> RAS int16 HU NIfTI volumes + studies manifest.

Public API:

* :class:`ConvertJob` (``ConvertJob.from_config(config, **cli_overrides)``) + :func:`run_convert` ->
  :class:`ConvertSummary`: the stage (DICOM or CT-RATE input; discovery, conversion in a process pool or
  through the caller's ``map_batches``, both manifests);
* :func:`discover_studies` (re-exported from :mod:`preprocessing.dicom_discovery`) and
  :func:`convert_study` -> :class:`ManifestRow` (one study; never raises for bad data), with
  :class:`ConvertSettings` (what is hashed into ``config_hash``).

Outputs under ``output_dir`` (names from :mod:`core.layout`): ``volumes/<study_id>.nii.gz`` (or
``.nii``), ``studies.parquet`` (one row per input study, ok | quarantined + reason, ``volume_path``
relative to the folder), ``unreadable.parquet`` (files attributable to no study). Shapes and spacings in
the manifest are (z, y, x) of the RAS+ volume on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from core import layout
from core.batches import ItemOutcome, MapBatches
from core.io import atomic_path, sha256_files
from preprocessing.deid import patient_pseudonym, scrub_text, series_pseudonym, study_pseudonym
from preprocessing.dicom_discovery import (
    Discovery,
    StudyFiles,
    UnreadableFile,
    discover_studies,
    scan_dicom_tree,
)

if TYPE_CHECKING:  # pragma: no cover
    from core.config import FvlmConfig

__all__ = [
    "ConvertJob",
    "ConvertSettings",
    "ConvertSummary",
    "ManifestRow",
    "convert_study",
    "discover_studies",
    "read_manifest",
    "run_convert",
]

logger = logging.getLogger(__name__)

CONVERTER_VERSION = "convert-1"
PLAUSIBLE_MAX_HU = 4000


@dataclass(frozen=True)
class ConvertSettings:
    """Everything (besides the inputs) that changes what convert writes; hashed into ``config_hash``."""

    salt: str
    strict: bool = False
    series_preference: tuple[str, ...] = ("thinnest", "soft_tissue_kernel", "most_slices")
    min_slices: int = 10
    max_spacing_deviation: float = 0.1
    output_extension: str = ".nii.gz"
    study_key_tag: str = "StudyInstanceUID"
    pseudonym_length: int = 16
    decode_threads: int = 1           # not part of the hash (does not change outputs)

    def config_hash(self) -> str:
        payload = {
            "version": CONVERTER_VERSION,
            "salt": hashlib.sha256(self.salt.encode()).hexdigest(),
            "strict": self.strict,
            "series_preference": list(self.series_preference),
            "min_slices": self.min_slices,
            "max_spacing_deviation": self.max_spacing_deviation,
            "output_extension": self.output_extension,
            "study_key_tag": self.study_key_tag,
            "pseudonym_length": self.pseudonym_length,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ManifestRow:
    study_id: str
    patient_id: str | None
    status: str                                   # ok | quarantined
    reason: str = ""
    series_id: str | None = None                  # pseudonym of the chosen SeriesInstanceUID
    series_description: str = ""                  # scrubbed
    series_number: int | None = None
    convolution_kernel: str = ""
    selection_policy: str = ""
    alternatives: str = "[]"                      # JSON list: other series + why not chosen
    slices: int = 0                               # slices in the output volume
    n_input_slices: int = 0
    shape: list[int] = field(default_factory=list)          # (z, y, x) of the RAS+ volume
    spacing: list[float] = field(default_factory=list)      # (z, y, x) mm
    affine: list[float] = field(default_factory=list)       # 16 floats, row-major, on-disk (x, y, z) -> RAS
    warnings: list[str] = field(default_factory=list)
    resampled: bool = False
    n_input_files: int = 0
    source_hash: str = ""
    config_hash: str = ""
    volume_path: str | None = None                # relative to the output dir
    transfer_syntaxes: list[str] = field(default_factory=list)
    hu_min: int | None = None
    hu_max: int | None = None
    input_format: str = "dicom"
    rescale_decision: str = ""                    # CT-RATE adapter: whether / why values were rescaled
    converter_version: str = CONVERTER_VERSION
    seconds: float = 0.0
    reused: bool = False                          # not stored: this run reused the previous result

    @classmethod
    def from_record(cls, record: dict) -> "ManifestRow":
        names = {f.name for f in fields(cls)}
        clean = {k: v for k, v in record.items() if k in names}
        for key in ("shape", "spacing", "affine", "warnings", "transfer_syntaxes"):
            if clean.get(key) is not None:
                clean[key] = list(clean[key])
        return cls(**clean)


def manifest_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("study_id", pa.string()),
            ("patient_id", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("series_id", pa.string()),
            ("series_description", pa.string()),
            ("series_number", pa.int64()),
            ("convolution_kernel", pa.string()),
            ("selection_policy", pa.string()),
            ("alternatives", pa.string()),
            ("slices", pa.int64()),
            ("n_input_slices", pa.int64()),
            ("shape", pa.list_(pa.int64())),
            ("spacing", pa.list_(pa.float64())),
            ("affine", pa.list_(pa.float64())),
            ("warnings", pa.list_(pa.string())),
            ("resampled", pa.bool_()),
            ("n_input_files", pa.int64()),
            ("source_hash", pa.string()),
            ("config_hash", pa.string()),
            ("volume_path", pa.string()),
            ("transfer_syntaxes", pa.list_(pa.string())),
            ("hu_min", pa.int64()),
            ("hu_max", pa.int64()),
            ("input_format", pa.string()),
            ("rescale_decision", pa.string()),
            ("converter_version", pa.string()),
            ("seconds", pa.float64()),
        ],
        metadata={
            b"fvlm.axis_order": b"shape and spacing are (z, y, x); NIfTI arrays on disk are (x, y, z), RAS+",
            b"fvlm.converter_version": CONVERTER_VERSION.encode(),
        },
    )


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = manifest_schema()
    records = []
    for row in sorted(rows, key=lambda r: r.study_id):
        record = asdict(row)
        record.pop("reused")
        records.append(record)
    table = pa.Table.from_pylist(records, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, ManifestRow]:
    """Previous manifest rows by study_id (empty when the file is missing or unreadable)."""
    import pyarrow.parquet as pq

    manifest = Path(path)
    if not manifest.is_file():
        return {}
    try:
        records = pq.read_table(manifest).to_pylist()
    except Exception as error:
        logger.warning("previous manifest %s unreadable (%s); converting everything", manifest, type(error).__name__)
        return {}
    return {record["study_id"]: ManifestRow.from_record(record) for record in records}


def write_unreadable(items: list[UnreadableFile], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("relative_path", pa.string()), ("reason", pa.string())])
    table = pa.Table.from_pylist([asdict(item) for item in items], schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def reusable(previous: ManifestRow | None, source_hash: str, config_hash: str, output_dir: Path) -> bool:
    if previous is None or previous.source_hash != source_hash or previous.config_hash != config_hash:
        return False
    """True when ``previous`` (the last run's row) still holds for these input and settings hashes."""
    if previous.status == "ok":
        return bool(previous.volume_path) and (output_dir / str(previous.volume_path)).is_file()
    return True


def remove_stale_volumes(output_dir: Path, study_id: str, keep: str | None = None) -> None:
    """Delete the study's volume files (all NIfTI extensions but ``keep``)."""
    for extension in layout.NIFTI_EXTENSIONS:
        stale = layout.volume_path(output_dir, study_id, extension)
        if extension != keep and stale.exists():
            stale.unlink()


def convert_study(
    study: StudyFiles,
    output_dir: str | os.PathLike[str],
    settings: ConvertSettings,
    *,
    previous: ManifestRow | None = None,
) -> ManifestRow:
    """Convert one study (selection -> assembly -> NIfTI); bad data gives a quarantined row, not an exception."""
    from preprocessing.series_selection import select_series
    from preprocessing.volume_assembly import AssemblyError, assemble_series
    from preprocessing.volume_writer import write_ras_nifti

    started = time.perf_counter()
    out = Path(output_dir)
    length = settings.pseudonym_length
    study_id = study_pseudonym(study.study_key, settings.salt, length)
    row = ManifestRow(
        study_id=study_id,
        patient_id=patient_pseudonym(study.patient_key, settings.salt, length),
        status="quarantined",
        n_input_files=study.n_files,
        config_hash=settings.config_hash(),
    )
    phi = study.phi_terms

    def clean(text: str) -> str:
        return scrub_text(text, phi)

    try:
        row.source_hash = sha256_files(study.files)
    except OSError as error:
        row.reason = clean(f"cannot read input files: {error.strerror or type(error).__name__}")
        return row
    if reusable(previous, row.source_hash, row.config_hash, out):
        assert previous is not None
        previous.reused = True
        return previous
    row.warnings = [clean(problem) for problem in study.problems]
    if row.patient_id is None:
        row.warnings.append("no PatientID: patient_id left empty")
    try:
        selection = select_series(list(study.series.values()), preference=list(settings.series_preference), min_slices=settings.min_slices)
    except ValueError as error:
        row.reason = clean(str(error))
        return row
    row.selection_policy = selection.policy
    row.alternatives = json.dumps(
        [
            {
                "series_id": series_pseudonym(c.series_uid, settings.salt, length),
                "series_number": c.series_number,
                "description": clean(c.description),
                "slices": c.n_slices,
                "spacing_mm": round(c.spacing_mm, 4) if c.spacing_mm else None,
                "kernel": clean(c.kernel),
                "excluded": clean(c.excluded) if c.excluded else None,
            }
            for c in selection.candidates
            if selection.chosen is None or c.series_uid != selection.chosen.series_uid
        ]
    )
    chosen = selection.chosen
    if chosen is None:
        row.reason = clean(selection.reason)
        remove_stale_volumes(out, study_id)
        row.seconds = round(time.perf_counter() - started, 3)
        return row
    row.series_id = series_pseudonym(chosen.series_uid, settings.salt, length)
    row.series_description = clean(chosen.description)
    row.series_number = chosen.series_number
    row.convolution_kernel = clean(chosen.kernel)
    try:
        assembled = assemble_series(
            study.series[chosen.series_uid].slices,
            strict=settings.strict,
            min_slices=settings.min_slices,
            max_spacing_deviation=settings.max_spacing_deviation,
            decode_threads=settings.decode_threads,
        )
        volume_relative = layout.volume_relpath(study_id, settings.output_extension)
        written = write_ras_nifti(assembled.hu_kji, assembled.affine_ras_ijk, out / volume_relative)
    except AssemblyError as error:
        row.reason = clean(f"series {chosen.series_number if chosen.series_number is not None else '?'}: {error}")
        remove_stale_volumes(out, study_id)
        row.seconds = round(time.perf_counter() - started, 3)
        return row
    except MemoryError:
        row.reason = "out of memory while assembling the volume"
        return row
    except Exception as error:  # never crash the cohort: unexpected errors quarantine with their type
        logger.exception("%s: unexpected error", study_id)
        row.reason = clean(f"unexpected error ({type(error).__name__}): {str(error)[:200]}")
        remove_stale_volumes(out, study_id)
        return row
    remove_stale_volumes(out, study_id, keep=settings.output_extension)
    row.status = "ok"
    row.volume_path = volume_relative
    row.slices = written.shape_zyx[0]
    row.n_input_slices = assembled.n_input_slices
    row.shape = list(written.shape_zyx)
    row.spacing = [round(v, 6) for v in written.spacing_zyx_mm]
    row.affine = [float(v) for v in written.affine_ras.ravel()]
    row.warnings += [clean(w) for w in assembled.warnings]
    row.resampled = assembled.resampled
    row.transfer_syntaxes = assembled.transfer_syntaxes
    row.hu_min, row.hu_max = written.hu_min, written.hu_max
    if written.hu_max > PLAUSIBLE_MAX_HU:
        row.warnings.append(f"HU maximum {written.hu_max} above {PLAUSIBLE_MAX_HU}: metal, or corrupt / mis-signed pixel data")
    row.seconds = round(time.perf_counter() - started, 3)
    return row


@dataclass
class ConvertSummary:
    n_studies: int
    n_ok: int
    n_quarantined: int
    n_reused: int
    n_unreadable_files: int
    n_files_seen: int
    manifest_path: Path
    unreadable_path: Path | None
    seconds: float
    rows: list[ManifestRow]

    def describe(self) -> str:
        lines = [
            f"convert: {self.n_studies} studies ({self.n_ok} ok, {self.n_quarantined} quarantined, "
            f"{self.n_reused} reused), {self.n_files_seen} files seen, {self.n_unreadable_files} unreadable, "
            f"{self.seconds:.1f} s",
            f"manifest: {self.manifest_path}",
        ]
        for row in self.rows:
            if row.status != "ok":
                lines.append(f"  quarantined {row.study_id}: {row.reason}")
        return "\n".join(lines)


InputFormat = Literal["dicom", "ctrate"]


@dataclass(frozen=True, kw_only=True)
class ConvertJob:
    """The convert stage: what to read, where to write, how (build it with :meth:`from_config`)."""

    input_dir: Path
    output_dir: Path
    settings: ConvertSettings
    input_format: InputFormat = "dicom"
    metadata_csv: Path | None = None      # CT-RATE metadata CSV (input_format "ctrate")
    workers: int = 1                      # study processes (the local run; the flow's max_workers)
    decode_threads: int | None = None     # pixel decode threads per study; None: CPUs / workers

    @classmethod
    def from_config(
        cls,
        config: "FvlmConfig",
        *,
        input_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        input_format: InputFormat | None = None,
        metadata_csv: str | os.PathLike[str] | None = None,
        strict: bool | None = None,
        workers: int | None = None,
        min_slices: int | None = None,
        output_extension: str | None = None,
    ) -> "ConvertJob":
        """The job of ``config`` (paths.raw_dicom -> paths.converted, convert.*, privacy.*); a ``None``
        override keeps the configured value."""
        from core.config import or_config

        section = config.convert
        metadata = or_config(metadata_csv, section.ctrate_metadata_csv)
        return cls(
            input_dir=config.path(or_config(input_dir, config.paths.raw_dicom)),
            output_dir=config.path(or_config(output_dir, config.paths.converted)),
            input_format=or_config(input_format, section.input_format),
            metadata_csv=config.path(metadata) if metadata else None,
            workers=or_config(workers, section.workers),
            settings=ConvertSettings(
                salt=config.privacy.salt,
                strict=or_config(strict, section.strict),
                series_preference=tuple(section.series_preference),
                min_slices=or_config(min_slices, section.min_slices),
                max_spacing_deviation=section.max_spacing_deviation,
                output_extension=or_config(output_extension, section.output_extension),
                study_key_tag=section.study_key_tag,
                pseudonym_length=config.privacy.pseudonym_length,
            ),
        )


@dataclass(frozen=True)
class ConvertItem:
    """One unit of convert work: the study's pseudonym (the only identity in logs and artifacts), its
    source (``StudyFiles`` or a CT-RATE volume; PHI in memory only) and the last run's row."""

    study_id: str
    source: object
    previous: ManifestRow | None


def item_key(item: ConvertItem) -> str:
    return item.study_id


def convert_batch(items: list[ConvertItem], output_dir: str, settings: ConvertSettings,
                  convert_one: Callable[..., ManifestRow] = convert_study) -> list[ItemOutcome]:
    """Batch function: convert each item (reusing unchanged ones); bad data -> quarantined outcome."""
    outcomes = []
    for item in items:
        row = convert_one(item.source, output_dir, settings, previous=item.previous)
        if row.status == "ok":
            status, reason = ("skipped", "unchanged (reused)") if row.reused else ("ok", "")
        else:
            status, reason = "quarantined", row.reason
        outcomes.append(ItemOutcome(item.study_id, status, reason, payload=row))  # type: ignore[arg-type]
    return outcomes


def local_conversions(workers: int, crash_row: Callable[[ConvertItem, str], ManifestRow]) -> MapBatches:
    """The library's own ``map_batches``: one study at a time, in a spawn process pool when
    ``workers > 1``; a crashed worker quarantines its study (``crash_row``)."""

    def map_batches(items: Sequence[ConvertItem], batch_fn: Callable[[list[ConvertItem]], Sequence[ItemOutcome]],
                    key_fn: Callable[[ConvertItem], str]) -> list[ItemOutcome]:
        outcomes: list[ItemOutcome] = []

        def done(outcome: ItemOutcome) -> None:
            outcomes.append(outcome)
            row = outcome.payload
            logger.info("[%d/%d] %s %s%s", len(outcomes), len(items), row.study_id, row.status,
                        " (reused)" if row.reused else "")

        if workers <= 1 or len(items) <= 1:
            for item in items:
                for outcome in batch_fn([item]):
                    done(outcome)
            return outcomes
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(batch_fn, [item]): item for item in items}
            for future in as_completed(futures):
                item = futures[future]
                try:
                    for outcome in future.result():
                        done(outcome)
                except Exception as error:
                    row = crash_row(item, f"worker process failed ({type(error).__name__})")
                    done(ItemOutcome(key_fn(item), "quarantined", row.reason, payload=row))
        return outcomes

    return map_batches


def convert_items(
    items: list[ConvertItem],
    output_dir: Path,
    settings: ConvertSettings,
    convert_one: Callable[..., ManifestRow],
    crash_row: Callable[[ConvertItem, str], ManifestRow],
    workers: int,
    map_batches: MapBatches | None,
) -> list[ManifestRow]:
    """Run the items through ``map_batches`` (default :func:`local_conversions`); one row per item (an
    item whose batch crashed under orchestration is quarantined as ``conversion crashed: <type>``)."""
    mapper = map_batches or local_conversions(workers, crash_row)
    batch_fn = functools.partial(convert_batch, output_dir=str(output_dir), settings=settings, convert_one=convert_one)
    by_id = {item.study_id: item for item in items}
    rows: list[ManifestRow] = []
    for outcome in mapper(items, batch_fn, item_key):
        if outcome.payload is not None:
            rows.append(outcome.payload)
        elif outcome.status == "failed":  # a crash, not bad data: still one manifest row per input study
            rows.append(crash_row(by_id[outcome.key], f"conversion crashed: {outcome.reason.split(':', 1)[0]}"))
    return rows


def run_convert(job: ConvertJob, map_batches: MapBatches | None = None) -> ConvertSummary:
    """The convert stage: discover the studies of ``job.input_dir`` (DICOM, or CT-RATE NIfTI + metadata),
    convert each one (reusing unchanged ones) and write both manifests atomically at the end.

    ``map_batches``: how batches of studies run (default: this library, ``job.workers`` processes; the
    Prefect flow passes its task fan-out)."""
    if job.input_format == "ctrate":
        from preprocessing.ctrate import run_ctrate

        return run_ctrate(job, map_batches)
    started = time.perf_counter()
    out = Path(job.output_dir)
    (out / layout.VOLUMES_DIR).mkdir(parents=True, exist_ok=True)
    cpu = os.cpu_count() or 1
    settings = replace(job.settings, decode_threads=job.decode_threads or max(1, cpu // max(1, job.workers)))
    discovery: Discovery = scan_dicom_tree(job.input_dir, study_key_tag=settings.study_key_tag)
    previous = read_manifest(layout.converted_manifest(out))
    length = settings.pseudonym_length
    items = []
    for study in discovery.studies:
        study_id = study_pseudonym(study.study_key, settings.salt, length)
        items.append(ConvertItem(study_id, study, previous.get(study_id)))

    def crash_row(item: ConvertItem, reason: str) -> ManifestRow:
        study: StudyFiles = item.source  # type: ignore[assignment]
        return ManifestRow(
            study_id=item.study_id,
            patient_id=patient_pseudonym(study.patient_key, settings.salt, length),
            status="quarantined",
            reason=reason,
            n_input_files=study.n_files,
            config_hash=settings.config_hash(),
        )

    rows = convert_items(items, out, settings, convert_study, crash_row, job.workers, map_batches)
    return finish_conversion(rows, discovery.unreadable, discovery.n_files_seen, out, started)


def finish_conversion(rows: list[ManifestRow], unreadable: list[UnreadableFile], n_files_seen: int, out: Path,
                      started: float) -> ConvertSummary:
    """The last step of every conversion run: write both manifests atomically and summarise."""
    manifest_path = layout.converted_manifest(out)
    write_manifest(rows, manifest_path)
    unreadable_path = layout.unreadable_table(out)
    write_unreadable(unreadable, unreadable_path)
    for row in rows:
        if row.status != "ok":
            logger.warning("%s: quarantined: %s", row.study_id, row.reason)
    return ConvertSummary(
        n_studies=len(rows),
        n_ok=sum(r.status == "ok" for r in rows),
        n_quarantined=sum(r.status != "ok" for r in rows),
        n_reused=sum(r.reused for r in rows),
        n_unreadable_files=len(unreadable),
        n_files_seen=n_files_seen,
        manifest_path=manifest_path,
        unreadable_path=unreadable_path,
        seconds=time.perf_counter() - started,
        rows=sorted(rows, key=lambda r: r.study_id),
    )
