"""The convert stage's records and machinery, shared by the DICOM path (:mod:`preprocessing.convert`) and
the CT-RATE adapter (:mod:`preprocessing.ctrate`): the hashed settings, manifest rows and their Parquet
I/O, the stage job and summary, and the batched execution of per-study conversions.
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core import layout
from core.batches import ItemOutcome, MapBatches
from core.io import atomic_path
from core.processes import die_with_parent
from core.records import NOT_STORED, arrow_schema
from preprocessing.dicom_discovery import UnreadableFile

if TYPE_CHECKING:  # pragma: no cover
    from core.config import FvlmConfig

logger = logging.getLogger("preprocessing.convert")

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
    decode_threads: int = 1  # not part of the hash (does not change outputs)

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
    status: str  # ok | quarantined
    reason: str = ""
    series_id: str | None = None  # pseudonym of the chosen SeriesInstanceUID
    series_description: str = ""  # scrubbed
    series_number: int | None = None
    convolution_kernel: str = ""
    selection_policy: str = ""
    alternatives: str = "[]"  # JSON list: other series + why not chosen
    slices: int = 0  # slices in the output volume
    n_input_slices: int = 0
    shape: list[int] = field(default_factory=list)  # (z, y, x) of the RAS+ volume
    spacing: list[float] = field(default_factory=list)  # (z, y, x) mm
    affine: list[float] = field(default_factory=list)  # 16 floats, row-major, on-disk (x, y, z) -> RAS
    warnings: list[str] = field(default_factory=list)
    resampled: bool = False
    n_input_files: int = 0
    source_hash: str = ""
    config_hash: str = ""
    volume_path: str | None = None  # relative to the output dir
    transfer_syntaxes: list[str] = field(default_factory=list)
    hu_min: int | None = None
    hu_max: int | None = None
    input_format: str = "dicom"
    rescale_decision: str = ""  # CT-RATE adapter: whether / why values were rescaled
    converter_version: str = CONVERTER_VERSION
    # not stored (NOT_STORED: no column): timings would make the DVC-tracked manifest differ run to run
    seconds: float = field(default=0.0, metadata=NOT_STORED)
    reused: bool = field(default=False, metadata=NOT_STORED)  # this run reused the previous result

    @classmethod
    def from_record(cls, record: dict) -> ManifestRow:
        names = {f.name for f in fields(cls)}
        clean = {k: v for k, v in record.items() if k in names}
        for key in ("shape", "spacing", "affine", "warnings", "transfer_syntaxes"):
            if clean.get(key) is not None:
                clean[key] = list(clean[key])
        return cls(**clean)


def manifest_schema() -> Any:
    """``studies.parquet``'s schema: :class:`ManifestRow`'s stored fields, in order (:mod:`core.records`)."""
    return arrow_schema(
        ManifestRow,
        metadata={
            b"fvlm.axis_order": b"shape and spacing are (z, y, x); NIfTI arrays on disk are (x, y, z), RAS+",
            b"fvlm.converter_version": CONVERTER_VERSION.encode(),
        },
    )


def _bitmap(flags: Sequence[bool]) -> bytes:
    """Arrow's validity / boolean bitmap (LSB first) of ``flags``."""
    out = bytearray((len(flags) + 7) // 8)
    for index, flag in enumerate(flags):
        if flag:
            out[index >> 3] |= 1 << (index & 7)
    return bytes(out)


_ARRAY_CODES = {"int64": "q", "int32": "i", "double": "d", "float": "f"}


def _arrow_column(values: Sequence[Any], kind: Any) -> Any:
    """The Arrow array of Python ``values`` (None: null) for one schema type, built from buffers: the same
    array as ``pa.array(values, type=kind)``, without the pandas import pyarrow does on the way there
    (~0.2 CPU s: a fifth of converting one series; pandas is not otherwise needed)."""
    import array

    import pyarrow as pa

    n = len(values)
    present = [value is not None for value in values]
    null_count = n - sum(present)
    validity = pa.py_buffer(_bitmap(present)) if null_count else None
    if pa.types.is_list(kind):
        offsets = array.array("i", [0])
        children: list[Any] = []
        for value in values:
            if value is not None:
                children.extend(value)
            offsets.append(len(children))
        child = _arrow_column(children, kind.value_type)
        return pa.Array.from_buffers(kind, n, [validity, pa.py_buffer(offsets)], null_count, children=[child])
    if pa.types.is_string(kind):
        encoded = [value.encode("utf-8") if value is not None else b"" for value in values]
        offsets = array.array("i", [0])
        total = 0
        for item in encoded:
            total += len(item)
            offsets.append(total)
        return pa.Array.from_buffers(
            kind, n, [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))], null_count
        )
    if pa.types.is_boolean(kind):
        bits = pa.py_buffer(_bitmap([bool(value) for value in values]))
        return pa.Array.from_buffers(kind, n, [validity, bits], null_count)
    code = _ARRAY_CODES[str(kind)]
    zero = 0.0 if code in "df" else 0
    data = array.array(code, [zero if value is None else value for value in values])
    return pa.Array.from_buffers(kind, n, [validity, pa.py_buffer(data)], null_count)


def arrow_table(records: Sequence[dict[str, Any]], schema: Any) -> Any:
    """``pa.Table.from_pylist(records, schema=schema)``, column by column from buffers (no pandas import);
    any value it does not expect falls back to ``from_pylist`` (a test compares the Parquet bytes)."""
    import pyarrow as pa

    try:
        columns = [
            _arrow_column([record.get(name) for record in records], schema.field(name).type) for name in schema.names
        ]
        for column in columns:
            column.validate(full=True)
        return pa.Table.from_arrays(columns, schema=schema)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError, pa.ArrowException):
        return pa.Table.from_pylist(list(records), schema=schema)


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    import pyarrow.parquet as pq

    schema = manifest_schema()
    # a shallow dict per row (dataclasses.asdict deep-copies every list: a third of a no-op run at 10^4 studies)
    stored = [f.name for f in fields(ManifestRow) if f.name not in ("reused", "seconds")]
    records = [{name: getattr(row, name) for name in stored} for row in sorted(rows, key=lambda r: r.study_id)]
    table = arrow_table(records, schema)
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
    import pyarrow.parquet as pq

    table = arrow_table([asdict(item) for item in items], arrow_schema(UnreadableFile))
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
    metadata_csv: Path | None = None  # CT-RATE metadata CSV (input_format "ctrate")
    workers: int = 1  # study processes (the local run; the flow's max_workers)
    decode_threads: int | None = None  # pixel decode threads per study; None: CPUs / workers
    identity_map: Path | None = None  # private pseudonym -> source map (privacy.identity_map); None: not written
    file_index: Path | None = None  # known files' headers + hashes (core.layout.convert_index_path); None: none

    @classmethod
    def from_config(
        cls,
        config: FvlmConfig,
        *,
        input_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        input_format: InputFormat | None = None,
        metadata_csv: str | os.PathLike[str] | None = None,
        strict: bool | None = None,
        workers: int | None = None,
        min_slices: int | None = None,
        output_extension: str | None = None,
    ) -> ConvertJob:
        """The job of ``config`` (paths.raw_dicom -> paths.converted, convert.*, privacy.*); a ``None``
        override keeps the configured value."""
        from core.config import or_config

        section = config.convert
        metadata = or_config(metadata_csv, section.ctrate_metadata_csv)
        source = config.path(or_config(input_dir, config.paths.raw_dicom))
        return cls(
            input_dir=source,
            file_index=layout.convert_index_path(config.root, source),
            output_dir=config.path(or_config(output_dir, config.paths.converted)),
            input_format=or_config(input_format, section.input_format),
            metadata_csv=config.path(metadata) if metadata else None,
            workers=or_config(workers, section.workers),
            identity_map=config.path(config.privacy.identity_map) if config.privacy.identity_map else None,
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


def convert_batch(
    items: list[ConvertItem], output_dir: str, settings: ConvertSettings, convert_one: Callable[..., ManifestRow]
) -> list[ItemOutcome]:
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

    def map_batches(
        items: Sequence[ConvertItem],
        batch_fn: Callable[[list[ConvertItem]], Sequence[ItemOutcome]],
        key_fn: Callable[[ConvertItem], str],
    ) -> list[ItemOutcome]:
        from core.progress import progress

        outcomes: list[ItemOutcome] = []
        bar = progress(len(items), "convert", "studies")

        def done(outcome: ItemOutcome) -> None:
            outcomes.append(outcome)
            row = outcome.payload
            logger.debug(
                "[%d/%d] %s %s%s",
                len(outcomes),
                len(items),
                row.study_id,
                row.status,
                " (reused)" if row.reused else "",
            )
            bar.advance()

        if workers <= 1 or len(items) <= 1:
            with bar:
                for item in items:
                    for outcome in batch_fn([item]):
                        done(outcome)
            return outcomes
        context = multiprocessing.get_context("spawn")
        with bar, ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent) as pool:
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
    from core.io import remove_stale_tmp_files

    for leftover in remove_stale_tmp_files(output_dir):  # a killed run's half-written files, before DVC sees them
        logger.info("removed a killed run's temporary file %s", leftover.relative_to(output_dir))
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


def finish_conversion(
    rows: list[ManifestRow], unreadable: list[UnreadableFile], n_files_seen: int, out: Path, started: float
) -> ConvertSummary:
    """The last step of every conversion run: write both manifests atomically and summarise."""
    manifest_path = layout.converted_manifest(out)
    write_manifest(rows, manifest_path)
    unreadable_path = layout.unreadable_table(out)
    write_unreadable(unreadable, unreadable_path)
    for row in rows:
        if row.status != "ok":  # debug: ConvertSummary.describe() lists each quarantine once
            logger.debug("%s: quarantined: %s", row.study_id, row.reason)
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
