"""`fvlm convert` as a library: DICOM tree -> RAS int16 HU NIfTI volumes + studies manifest.

Public API (the orchestration layer fans out over batches of studies):

* :func:`discover_studies` (re-exported from :mod:`preprocessing.dicom_discovery`)
* :func:`convert_study` -> :class:`ManifestRow` (one study; never raises for bad data)
* :func:`convert_studies` -> :class:`ConvertSummary` (discovery + parallel conversion + manifests)

Outputs under ``output_dir``: ``volumes/<study_id>.nii.gz`` (or ``.nii``), ``studies.parquet`` (one
row per input study, ok | quarantined + reason), ``unreadable.parquet`` (files attributable to no
study). Shapes and spacings in the manifest are (z, y, x) of the RAS+ volume on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.io import atomic_path, sha256_files
from preprocessing.deid import patient_pseudonym, scrub_text, series_pseudonym, study_pseudonym
from preprocessing.dicom_discovery import Discovery, StudyFiles, UnreadableFile, discover_studies, scan_dicom_tree

__all__ = [
    "ConvertSettings",
    "ConvertSummary",
    "ManifestRow",
    "convert_studies",
    "convert_study",
    "discover_studies",
    "read_manifest",
]

logger = logging.getLogger(__name__)

CONVERTER_VERSION = "convert-1"
MANIFEST_NAME = "studies.parquet"
UNREADABLE_NAME = "unreadable.parquet"
VOLUMES_DIR = "volumes"
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


def _reusable(previous: ManifestRow | None, source_hash: str, config_hash: str, output_dir: Path) -> bool:
    if previous is None or previous.source_hash != source_hash or previous.config_hash != config_hash:
        return False
    if previous.status == "ok":
        return bool(previous.volume_path) and (output_dir / str(previous.volume_path)).is_file()
    return True


def _remove_stale_volumes(output_dir: Path, study_id: str) -> None:
    for suffix in (".nii.gz", ".nii"):
        stale = output_dir / VOLUMES_DIR / f"{study_id}{suffix}"
        if stale.exists():
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
    if _reusable(previous, row.source_hash, row.config_hash, out):
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
        _remove_stale_volumes(out, study_id)
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
        volume_relative = f"{VOLUMES_DIR}/{study_id}{settings.output_extension}"
        written = write_ras_nifti(assembled.hu_kji, assembled.affine_ras_ijk, out / volume_relative)
    except AssemblyError as error:
        row.reason = clean(f"series {chosen.series_number if chosen.series_number is not None else '?'}: {error}")
        _remove_stale_volumes(out, study_id)
        row.seconds = round(time.perf_counter() - started, 3)
        return row
    except MemoryError:
        row.reason = "out of memory while assembling the volume"
        return row
    except Exception as error:  # never crash the cohort: unexpected errors quarantine with their type
        logger.exception("%s: unexpected error", study_id)
        row.reason = clean(f"unexpected error ({type(error).__name__}): {str(error)[:200]}")
        _remove_stale_volumes(out, study_id)
        return row
    other_suffix = ".nii" if settings.output_extension == ".nii.gz" else ".nii.gz"
    stale = out / VOLUMES_DIR / f"{study_id}{other_suffix}"
    if stale.exists():
        stale.unlink()
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


def _convert_worker(study: StudyFiles, output_dir: str, settings: ConvertSettings, previous: ManifestRow | None) -> ManifestRow:
    return convert_study(study, output_dir, settings, previous=previous)


def run_conversions(
    studies: list[StudyFiles],
    output_dir: Path,
    settings: ConvertSettings,
    previous: dict[str, ManifestRow],
    workers: int,
) -> list[ManifestRow]:
    """Convert studies (in a process pool when ``workers > 1``); a crashed worker quarantines its study."""
    length = settings.pseudonym_length
    prior = {s.study_key: previous.get(study_pseudonym(s.study_key, settings.salt, length)) for s in studies}
    rows: list[ManifestRow] = []

    def progress(row: ManifestRow) -> None:
        rows.append(row)
        logger.info("[%d/%d] %s %s%s", len(rows), len(studies), row.study_id, row.status, " (reused)" if row.reused else "")

    if workers <= 1 or len(studies) <= 1:
        for study in studies:
            progress(convert_study(study, output_dir, settings, previous=prior[study.study_key]))
        return rows
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_convert_worker, s, str(output_dir), settings, prior[s.study_key]): s for s in studies}
        for future in as_completed(futures):
            study = futures[future]
            try:
                progress(future.result())
            except Exception as error:
                progress(
                    ManifestRow(
                        study_id=study_pseudonym(study.study_key, settings.salt, length),
                        patient_id=patient_pseudonym(study.patient_key, settings.salt, length),
                        status="quarantined",
                        reason=f"worker process failed ({type(error).__name__})",
                        n_input_files=study.n_files,
                        config_hash=settings.config_hash(),
                    )
                )
    return rows


def convert_studies(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    salt: str,
    strict: bool = False,
    workers: int = 1,
    series_preference: list[str] | tuple[str, ...] = ("thinnest", "soft_tissue_kernel", "most_slices"),
    study_key_tag: str = "StudyInstanceUID",
    min_slices: int = 10,
    max_spacing_deviation: float = 0.1,
    output_extension: str = ".nii.gz",
    pseudonym_length: int = 16,
    decode_threads: int | None = None,
) -> ConvertSummary:
    """Discover every study under ``input_dir`` and convert it; writes volumes + both manifests."""
    started = time.perf_counter()
    out, settings, discovery, previous = start_conversion(
        input_dir, output_dir, salt=salt, strict=strict, workers=workers, series_preference=series_preference,
        study_key_tag=study_key_tag, min_slices=min_slices, max_spacing_deviation=max_spacing_deviation,
        output_extension=output_extension, pseudonym_length=pseudonym_length, decode_threads=decode_threads,
    )
    rows = run_conversions(discovery.studies, out, settings, previous, workers)
    return finish_conversion(rows, discovery, out, started)


def start_conversion(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    salt: str,
    strict: bool,
    workers: int,
    series_preference: list[str] | tuple[str, ...],
    study_key_tag: str,
    min_slices: int,
    max_spacing_deviation: float,
    output_extension: str,
    pseudonym_length: int,
    decode_threads: int | None = None,
) -> tuple[Path, ConvertSettings, Discovery, dict[str, ManifestRow]]:
    """Shared first step of a conversion run (library or Prefect flow): settings, discovery, last manifest."""
    out = Path(output_dir)
    (out / VOLUMES_DIR).mkdir(parents=True, exist_ok=True)
    cpu = os.cpu_count() or 1
    settings = ConvertSettings(
        salt=salt,
        strict=strict,
        series_preference=tuple(series_preference),
        min_slices=min_slices,
        max_spacing_deviation=max_spacing_deviation,
        output_extension=output_extension,
        study_key_tag=study_key_tag,
        pseudonym_length=pseudonym_length,
        decode_threads=decode_threads if decode_threads else max(1, cpu // max(1, workers)),
    )
    discovery: Discovery = scan_dicom_tree(input_dir, study_key_tag=study_key_tag)
    return out, settings, discovery, read_manifest(out / MANIFEST_NAME)


def finish_conversion(rows: list[ManifestRow], discovery: Discovery, out: Path, started: float) -> ConvertSummary:
    """Shared last step: write both manifests atomically and summarise (one row per input study)."""
    manifest_path = out / MANIFEST_NAME
    write_manifest(rows, manifest_path)
    unreadable_path = out / UNREADABLE_NAME
    write_unreadable(discovery.unreadable, unreadable_path)
    for row in rows:
        if row.status != "ok":
            logger.warning("%s: quarantined: %s", row.study_id, row.reason)
    return ConvertSummary(
        n_studies=len(rows),
        n_ok=sum(r.status == "ok" for r in rows),
        n_quarantined=sum(r.status != "ok" for r in rows),
        n_reused=sum(r.reused for r in rows),
        n_unreadable_files=len(discovery.unreadable),
        n_files_seen=discovery.n_files_seen,
        manifest_path=manifest_path,
        unreadable_path=unreadable_path,
        seconds=time.perf_counter() - started,
        rows=sorted(rows, key=lambda r: r.study_id),
    )
