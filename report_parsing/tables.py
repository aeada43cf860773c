"""Cohort-level parsing: report rows -> per-study x anatomy table + per-study table (Parquet).

Per-row status (never an exception for a bad row):

=================  ===========================================================================
``ok``             parsed
``truncated``      longer than ``max_chars``; the first ``max_chars`` characters were parsed
``empty``          no Findings / Impression / text
``non_english``    too few English function words / Latin letters to parse with English rules
``malformed``      wrong number of CSV fields
``missing_id``     no value in the id column (no study_id can be made)
``duplicate_id``   the id repeats an earlier row (the first row wins)
=================  ===========================================================================

Only ``ok`` / ``truncated`` studies get anatomy rows and 0/1 labels; the others keep labels = -1.

Entry point of the stage: :class:`ParseReportsJob` (``ParseReportsJob.from_config(config, ...)``) +
:func:`run_parse_reports` -> :class:`ParseReportsSummary`; table names from :mod:`core.layout`.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import layout
from core.anatomy_sets import CTRATE_LABELS
from core.batches import ItemOutcome, MapBatches
from report_parsing.io import ReportRow, read_report_rows
from report_parsing.sections import join_columns

if TYPE_CHECKING:  # pragma: no cover
    from core.config import FvlmConfig

PARSED_STATUSES = frozenset({"ok", "truncated"})
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_ENGLISH_FUNCTION_WORDS = frozenset(
    "the a an of in on at and or no not is are was were be been with without to for from by as this that there "
    "which both left right than".split()
)


@dataclass
class ParseOptions:
    id_column: str = "study_key"
    findings_column: str | None = "Findings"
    impression_column: str | None = "Impression"
    text_column: str | None = None  # one text holding Findings (+ Impression): wins when set
    anatomy_set: str = "ctrate4"
    salt: str = "fvlm-demo-salt-change-me"
    pseudonym_length: int = 16
    max_chars: int = 20_000
    scrub_phi: bool = True
    uncertain_is_positive: bool = True
    batch_size: int = 256
    n_process: int = 1
    hash_ids: bool = True  # False: keep the id as is (label-reports keeps the input id)
    decomposition: str | None = None  # fVLM desc_info / conc_info: the per-anatomy text (labels stay ours)
    llm_endpoint: str | None = None  # OpenAI-compatible API for the per-anatomy text (report_parsing.llm_decomposition)
    llm_model: str = ""

    @classmethod
    def from_config(
        cls,
        config: FvlmConfig,
        *,
        id_column: str | None = None,
        findings_column: str | None = None,
        impression_column: str | None = None,
        text_column: str | None = None,
        anatomy_set: str | None = None,
        batch_size: int | None = None,
        n_process: int | None = None,
        hash_ids: bool = True,
        decomposition: str | None = None,
        llm_endpoint: str | None = None,
        llm_model: str = "",
    ) -> ParseOptions:
        """The options of ``config`` (reports.*, segment.anatomy_set, privacy.*); a ``None`` override keeps
        the configured value. A text column (given or configured) wins unless a findings / impression
        column is given explicitly."""
        from core.config import or_config

        reports = config.reports
        text = or_config(text_column, reports.text_column)
        findings = or_config(findings_column, reports.findings_column)
        impression = or_config(impression_column, reports.impression_column)
        if findings_column is None and impression_column is None and text:
            findings = impression = None
        return cls(
            id_column=id_column or reports.id_column,
            findings_column=findings,
            impression_column=impression,
            text_column=text,
            anatomy_set=anatomy_set or config.segment.anatomy_set,
            salt=config.privacy.salt,
            pseudonym_length=config.privacy.pseudonym_length,
            max_chars=reports.max_chars,
            scrub_phi=reports.scrub_phi,
            uncertain_is_positive=reports.uncertain_is_positive,
            batch_size=batch_size or reports.batch_size,
            n_process=n_process or reports.n_process,
            hash_ids=hash_ids,
            decomposition=decomposition or (str(config.path(reports.decomposition)) if reports.decomposition else None),
            llm_endpoint=llm_endpoint,
            llm_model=llm_model,
        )

    def required_columns(self) -> list[str]:
        if self.text_column:
            return [self.id_column, self.text_column]
        columns = [c for c in (self.findings_column, self.impression_column) if c]
        if not columns:
            raise ValueError(
                "give a text column or at least one of findings / impression columns "
                "(reports.text_column, reports.findings_column, reports.impression_column in params.yaml)"
            )
        return [self.id_column, *columns]


@dataclass
class StudyRecord:
    key: str  # the input id (never written when hash_ids: may be PHI)
    study_id: str
    line: int
    status: str = "ok"
    reason: str = ""
    report_text: str = ""  # PHI-scrubbed text that was parsed (offsets refer to it)
    phi_replacements: int = 0
    analysis: Any = None  # ReportAnalysis for parsed rows
    labels: list[int] = field(default_factory=lambda: [-1] * len(CTRATE_LABELS))
    anatomy_texts: Any = None  # per anatomy (+ other) AnatomyText from reports.decomposition, else None


# an ASCII text's bytes with every letter lower-cased and everything else a space: ``split()`` then gives
# the lower-cased ``[A-Za-z]+`` words in C, no regex and no str object per word
_ASCII_LETTERS_LOWER = bytes((c | 0x20) if (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A) else 0x20 for c in range(256))
_ENGLISH_FUNCTION_BYTES = frozenset(word.encode() for word in _ENGLISH_FUNCTION_WORDS)


def english_ratio(text: str) -> tuple[float, float, int]:
    """(share of English function words among words, share of ASCII among letters, word count)."""
    sample = text[:5000]
    if sample.isascii():
        # the same words as [A-Za-z]+, found and lower-cased by one byte translation; all letters are ASCII
        words = sample.encode("ascii").translate(_ASCII_LETTERS_LOWER).split()
        if not words:
            return 0.0, 0.0, 0
        return sum(map(_ENGLISH_FUNCTION_BYTES.__contains__, words)) / len(words), 1.0, len(words)
    words = _WORD.findall(sample)
    if not words:
        return 0.0, 0.0, 0
    letters = "".join(words)
    # C-level counts (same numbers as a loop per character / per word): encode drops the non-ASCII letters;
    # lower-casing the joined words splits back into the same words (no letter lower-cases to a space)
    ascii_letters = len(letters) if letters.isascii() else len(letters.encode("ascii", "ignore"))
    function_words = sum(map(_ENGLISH_FUNCTION_WORDS.__contains__, " ".join(words).lower().split()))
    return function_words / len(words), ascii_letters / len(letters), len(words)


def prepare_records(rows: list[ReportRow], options: ParseOptions) -> list[StudyRecord]:
    """Status, id, scrubbed text per row (no parsing yet). PHI: the rules per text, then the name detector's
    model once over the candidate sentences of all texts (report_parsing.phi.scrub_phi_many)."""
    from core.privacy import pseudonym
    from report_parsing.phi import scrub_phi_many

    records: list[StudyRecord] = []
    seen: set[str] = set()
    for row in rows:
        key = row.values.get(options.id_column, "").strip()
        study_id = (
            pseudonym(key, options.salt, kind="study", length=options.pseudonym_length)
            if key and options.hash_ids
            else key
        )
        record = StudyRecord(key, study_id, row.line)
        records.append(record)
        if row.malformed:
            record.status, record.reason = "malformed", f"line {row.line}: {row.malformed}"
            continue
        if not key:
            record.status, record.reason = "missing_id", f"line {row.line}: empty {options.id_column!r}"
            continue
        if key in seen:
            record.status, record.reason = "duplicate_id", f"line {row.line}: id repeats an earlier row"
            continue
        seen.add(key)
        if options.text_column:
            text = row.values.get(options.text_column, "").strip()
        else:
            findings = row.values.get(options.findings_column, "") if options.findings_column else ""
            impression = row.values.get(options.impression_column, "") if options.impression_column else ""
            text = join_columns(findings, impression)
        if not text.strip():
            record.status, record.reason = "empty", f"line {row.line}: no report text"
            continue
        if len(text) > options.max_chars:
            record.status = "truncated"
            record.reason = f"line {row.line}: {len(text)} characters, parsed the first {options.max_chars}"
            text = text[: options.max_chars]
        function_share, ascii_share, n_words = english_ratio(text)
        if n_words >= 3 and (ascii_share < 0.8 or (n_words >= 8 and function_share < 0.05)):
            record.status = "non_english"
            record.reason = (
                f"line {row.line}: does not look like English "
                f"(function words {function_share:.0%}, ASCII letters {ascii_share:.0%})"
            )
            text = ""
        record.report_text = text
    if options.scrub_phi:
        todo = [record for record in records if record.report_text]
        for record, scrubbed in zip(todo, scrub_phi_many([record.report_text for record in todo]), strict=True):
            record.report_text, record.phi_replacements = scrubbed.text, scrubbed.replaced
    return records


def parse_records(records: list[StudyRecord], options: ParseOptions, *, show_progress: bool = False) -> None:
    """Run the spaCy pipeline over the parseable records (in place); ``show_progress``: count the
    parsed reports on a bar / in periodic lines (the stage's local run; a batch task does not)."""
    from core.progress import progress
    from report_parsing.pipeline import analyze_many, cyclic_gc_paused

    todo = [record for record in records if record.status in PARSED_STATUSES]
    with cyclic_gc_paused(), progress(len(todo), "parse-reports", "reports", enabled=show_progress) as bar:
        analyses = analyze_many(
            (record.report_text for record in todo),
            options.anatomy_set,
            batch_size=options.batch_size,
            n_process=options.n_process,
            uncertain_is_positive=options.uncertain_is_positive,
        )
        for record, analysis in zip(todo, analyses, strict=False):
            record.analysis = analysis
            record.labels = list(analysis.labels)
            bar.advance()


def parse_reports_file(path: str | Path, options: ParseOptions) -> list[StudyRecord]:
    _, rows = read_report_rows(path, options.required_columns())
    records = prepare_records(rows, options)
    parse_records(records, options)
    apply_decomposition(records, options)
    apply_llm_decomposition(records, options)
    return records


def anatomy_rows(records: list[StudyRecord], anatomy_set: str) -> Iterator[dict[str, Any]]:
    """One row per parsed study x anatomy (+ ``other``)."""
    from core.anatomy_sets import load_anatomy_set
    from report_parsing.analyze import anatomy_text_pieces

    names = list(load_anatomy_set(anatomy_set).anatomy_names)
    for record in records:
        analysis = record.analysis
        if analysis is None:
            continue
        if record.anatomy_texts is not None:
            yield from _decomposed_rows(record, names)
            continue
        # pieces: whole sentences, or an anatomy's own clauses of a sentence naming several (offsets into report_text)
        per_anatomy = anatomy_text_pieces(analysis, len(names))
        for index, name in enumerate([*names, "other"]):
            pieces = per_anatomy[index]
            sentence_indices = [i for _, _, i in pieces]
            yield {
                "study_id": record.study_id,
                "anatomy": name,
                "anatomy_index": index,
                "text": " ".join(record.report_text[a:b] for a, b, _ in pieces),
                "abnormal": bool(analysis.anatomy_abnormal[index])
                if index < len(names)
                else any(analysis.sentence_abnormal[i] for i in sentence_indices),
                "n_sentences": len(pieces),
                "sentence_starts": [a for a, _, _ in pieces],
                "sentence_ends": [b for _, b, _ in pieces],
                "sentence_sections": [analysis.sentence_sections[i] for i in sentence_indices],
                "sentence_abnormal": [bool(analysis.sentence_abnormal[i]) for i in sentence_indices],
            }


def _decomposed_rows(record: StudyRecord, names: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of a study whose anatomy text comes from reports.decomposition (not from the report:
    no offsets)."""
    for index, (name, anatomy_text) in enumerate(zip([*names, "other"], record.anatomy_texts, strict=True)):
        yield {
            "study_id": record.study_id,
            "anatomy": name,
            "anatomy_index": index,
            "text": anatomy_text.text,
            "abnormal": anatomy_text.abnormal,
            "n_sentences": 0,
            "sentence_starts": [],
            "sentence_ends": [],
            "sentence_sections": [],
            "sentence_abnormal": [],
        }


def apply_llm_decomposition(records: list[StudyRecord], options: ParseOptions) -> tuple[int, int]:
    """Per-anatomy text from ``options.llm_endpoint`` for parsed records still without one (off when
    unset); returns (from the LLM, fell back to the rules)."""
    if not options.llm_endpoint:
        return 0, 0
    from report_parsing.llm_decomposition import LLMBackend, apply_llm

    backend = LLMBackend(options.llm_endpoint, options.llm_model, api_key=os.environ.get("FVLM_LLM_API_KEY"))
    return apply_llm(records, backend, options.anatomy_set)


def apply_decomposition(records: list[StudyRecord], options: ParseOptions) -> tuple[int, int]:
    """Per-anatomy text of the parsed records from ``options.decomposition`` (in place); returns
    (studies found in it, parsed studies not found: they keep the rule-based text)."""
    if not options.decomposition:
        return 0, 0
    from report_parsing.decomposition import Decomposition

    decomposition = Decomposition.load(options.decomposition, options.anatomy_set)
    found = missing = 0
    for record in records:
        if record.analysis is None or record.status not in PARSED_STATUSES:
            continue
        volume = decomposition.key_for(record.key)
        if volume is None:
            missing += 1
            continue
        record.anatomy_texts = decomposition.texts(volume)
        found += 1
    return found, missing


def _anatomy_columns(records: list[StudyRecord], anatomy_set: str) -> dict[str, list[Any]]:
    """The rows of :func:`anatomy_rows` as columns (one list per field; the list fields' values flattened,
    row ``i`` holding ``values[offsets[i]:offsets[i + 1]]`` of each, ``"offsets"``): the long table is built
    from these without a dict per row."""
    from core.anatomy_sets import load_anatomy_set
    from report_parsing.analyze import anatomy_text_pieces

    names = list(load_anatomy_set(anatomy_set).anatomy_names)
    slots = [*names, "other"]
    n_names = len(names)
    study_id: list[str] = []
    anatomy: list[str] = []
    anatomy_index: list[int] = []
    text: list[str] = []
    abnormal: list[bool] = []
    n_sentences: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    sections: list[str] = []
    sentence_abnormal: list[bool] = []
    offsets = [0]
    for record in records:
        analysis = record.analysis
        if analysis is None:
            continue
        if record.anatomy_texts is not None:
            for row in _decomposed_rows(record, names):
                study_id.append(row["study_id"])
                anatomy.append(row["anatomy"])
                anatomy_index.append(row["anatomy_index"])
                text.append(row["text"])
                abnormal.append(row["abnormal"])
                n_sentences.append(0)
                offsets.append(len(starts))
            continue
        report_text = record.report_text
        section_of = analysis.sentence_sections
        abnormal_of = analysis.sentence_abnormal
        anatomy_abnormal = analysis.anatomy_abnormal
        study_id.extend([record.study_id] * len(slots))
        anatomy.extend(slots)
        anatomy_index.extend(range(len(slots)))
        for index, pieces in enumerate(anatomy_text_pieces(analysis, n_names)):
            text.append(" ".join([report_text[a:b] for a, b, _ in pieces]))
            n_sentences.append(len(pieces))
            flags = [bool(abnormal_of[i]) for _, _, i in pieces]
            abnormal.append(bool(anatomy_abnormal[index]) if index < n_names else any(flags))
            starts.extend([a for a, _, _ in pieces])
            ends.extend([b for _, b, _ in pieces])
            sections.extend([section_of[i] for _, _, i in pieces])
            sentence_abnormal.extend(flags)
            offsets.append(len(starts))
    return {
        "study_id": study_id,
        "anatomy": anatomy,
        "anatomy_index": anatomy_index,
        "text": text,
        "abnormal": abnormal,
        "n_sentences": n_sentences,
        "sentence_starts": starts,
        "sentence_ends": ends,
        "sentence_sections": sections,
        "sentence_abnormal": sentence_abnormal,
        "offsets": offsets,
    }


_INT32_MAX = 2**31 - 1


def _arrow_array(values: list[Any], arrow_type: Any) -> Any:
    """``pa.array(values, arrow_type)`` for a flat string / integer / boolean column (``None``: null), built
    from buffers: the same array, without ``pa.array``'s first call importing pandas (~0.2 s of a
    one-shot command) nor a Python object per value crossing into Arrow's converter."""
    import numpy as np
    import pyarrow as pa

    count = len(values)
    nulls = [value is None for value in values]
    validity, null_count = None, sum(nulls)
    if null_count:
        validity = pa.py_buffer(np.packbits(~np.array(nulls, dtype=bool), bitorder="little"))
    if pa.types.is_string(arrow_type):
        encoded = [b"" if value is None else value.encode() for value in values]
        data = b"".join(encoded)
        if len(data) > _INT32_MAX:  # past 32-bit offsets: pyarrow's converter chunks it
            return pa.array(values, arrow_type)
        offsets = np.zeros(count + 1, dtype=np.int32)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=count), out=offsets[1:], dtype=np.int32)
        buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(data)]
    elif pa.types.is_boolean(arrow_type):
        bits = np.fromiter((bool(value) for value in values), dtype=bool, count=count)
        buffers = [validity, pa.py_buffer(np.packbits(bits, bitorder="little"))]
    elif not pa.types.is_signed_integer(arrow_type):
        return pa.array(values, arrow_type)
    else:
        numbers = np.fromiter((0 if value is None else value for value in values), dtype=np.int64, count=count)
        narrow = numbers.astype(f"int{arrow_type.bit_width}")
        if not np.array_equal(narrow, numbers):  # out of range: let pyarrow raise as it always did
            return pa.array(values, arrow_type)
        buffers = [validity, pa.py_buffer(narrow)]
    return pa.Array.from_buffers(arrow_type, count, buffers, null_count=null_count)


def _arrow_list(values: list[Any], offsets: list[int], arrow_type: Any) -> Any:
    """A list column: ``values`` flattened, row ``i`` holding ``values[offsets[i]:offsets[i + 1]]``."""
    import numpy as np
    import pyarrow as pa

    child = _arrow_array(values, arrow_type.value_type)
    if len(values) > _INT32_MAX:
        return pa.array([values[a:b] for a, b in zip(offsets, offsets[1:], strict=False)], arrow_type)
    bounds = pa.py_buffer(np.array(offsets, dtype=np.int32))
    return pa.Array.from_buffers(arrow_type, len(offsets) - 1, [None, bounds], children=[child])


def write_tables(records: list[StudyRecord], out_path: str | Path, anatomy_set: str) -> tuple[Path, Path]:
    """OUT.parquet (study x anatomy) and OUT.studies.parquet (per study), both atomic. The tables are
    built column-wise (the same tables :func:`anatomy_rows` and ``pa.Table.from_pylist`` gave)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.anatomy_sets import load_anatomy_set
    from core.io import atomic_path

    out_path = Path(out_path)
    studies_path = layout.reports_studies_path(out_path)
    anatomy_names = list(load_anatomy_set(anatomy_set).anatomy_names)
    metadata = {
        b"fvlm.anatomy_set": anatomy_set.encode(),
        b"fvlm.anatomies": json.dumps([*anatomy_names, "other"]).encode(),
        b"fvlm.labels": json.dumps(list(CTRATE_LABELS)).encode(),
        b"fvlm.offsets": b"sentence_starts/ends are character offsets into studies.report_text",
    }
    long_schema = pa.schema(
        [
            ("study_id", pa.string()),
            ("anatomy", pa.string()),
            ("anatomy_index", pa.int16()),
            ("text", pa.string()),
            ("abnormal", pa.bool_()),
            ("n_sentences", pa.int32()),
            ("sentence_starts", pa.list_(pa.int32())),
            ("sentence_ends", pa.list_(pa.int32())),
            ("sentence_sections", pa.list_(pa.string())),
            ("sentence_abnormal", pa.list_(pa.bool_())),
        ],
        metadata=metadata,
    )
    columns = _anatomy_columns(records, anatomy_set)
    offsets = columns["offsets"]
    long_table = pa.Table.from_arrays(
        [
            _arrow_list(columns[f.name], offsets, f.type)
            if pa.types.is_list(f.type)
            else _arrow_array(columns[f.name], f.type)
            for f in long_schema
        ],
        schema=long_schema,
    )
    study_columns: dict[str, list[Any]] = {
        # a repeated id would give two rows one study_id: only the first row keeps it
        "study_id": [None if r.status in ("missing_id", "duplicate_id") else r.study_id for r in records],
        "status": [record.status for record in records],
        "reason": [record.reason for record in records],
        "report_text": [record.report_text for record in records],
        "n_sentences": [len(r.analysis.sentences) if r.analysis else 0 for r in records],
        "has_findings": [bool(r.analysis and r.analysis.has_findings) for r in records],
        "has_impression": [bool(r.analysis and r.analysis.has_impression) for r in records],
        "phi_replacements": [record.phi_replacements for record in records],
    }
    for position, label in enumerate(CTRATE_LABELS):
        study_columns[label] = [record.labels[position] for record in records]
    study_schema = pa.schema(
        [
            ("study_id", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("report_text", pa.string()),
            ("n_sentences", pa.int32()),
            ("has_findings", pa.bool_()),
            ("has_impression", pa.bool_()),
            ("phi_replacements", pa.int32()),
            *[(label, pa.int8()) for label in CTRATE_LABELS],
        ],
        metadata=metadata,
    )
    study_table = pa.Table.from_arrays(
        [_arrow_array(study_columns[f.name], f.type) for f in study_schema], schema=study_schema
    )
    with atomic_path(out_path) as tmp:
        pq.write_table(long_table, tmp, compression="zstd")
    with atomic_path(studies_path) as tmp:
        pq.write_table(study_table, tmp, compression="zstd")
    return out_path, studies_path


# ------------------------------------------------------------------------------------------ the stage
@dataclass(frozen=True)
class ParseReportsJob:
    """The parse-reports stage: reports CSV in, ``OUT.parquet`` + ``OUT.studies.parquet`` out."""

    reports_csv: Path
    out_parquet: Path
    options: ParseOptions = field(default_factory=ParseOptions)

    @classmethod
    def from_config(
        cls,
        config: FvlmConfig,
        *,
        reports_csv: str | os.PathLike[str] | None = None,
        out_parquet: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> ParseReportsJob:
        """paths.reports_csv -> paths.reports_table by default; ``options``: the overrides of
        :meth:`ParseOptions.from_config`."""
        from core.config import or_config

        return cls(
            config.path(or_config(reports_csv, config.paths.reports_csv)),
            config.path(or_config(out_parquet, config.paths.reports_table)),
            ParseOptions.from_config(config, **options),
        )


@dataclass
class ParseReportsSummary:
    records: list[StudyRecord]  # in input order
    long_path: Path
    studies_path: Path
    seconds: float
    decomposed: int = 0  # studies whose anatomy text came from reports.decomposition
    not_in_decomposition: int = 0  # parsed studies it lacks (rule-based text)
    by_llm: int = 0  # studies whose anatomy text came from the LLM backend
    llm_fallback: int = 0  # studies the backend failed / answered invalidly for (rule-based text)


def record_key(record: StudyRecord) -> str:
    return f"line-{record.line}"  # unique and PHI-free (the input id may be PHI; study_id may be empty)


def parse_batch(records: list[StudyRecord], options: ParseOptions) -> list[ItemOutcome]:
    """Batch function: spaCy over the parseable reports of the batch; others are quarantined as given."""
    parse_records(records, options)  # in place on this worker's copy
    outcomes = []
    for record in records:
        if record.status in PARSED_STATUSES:
            outcomes.append(
                ItemOutcome(record_key(record), "ok", record.reason, payload=(record.analysis, list(record.labels)))
            )
        else:
            outcomes.append(ItemOutcome(record_key(record), "quarantined", f"{record.status}: {record.reason}"))
    return outcomes


def run_parse_reports(job: ParseReportsJob, map_batches: MapBatches | None = None) -> ParseReportsSummary:
    """The parse-reports stage: read the CSV (file-level problems raise ``ReportsFileError``), give every
    row a status, parse the parseable ones, write both tables atomically.

    ``map_batches``: how batches of reports are parsed (default: all at once in this process, spaCy's
    ``n_process`` inside; the Prefect flow passes its task fan-out). A report whose batch crashed gets
    status ``failed``.
    """
    started = time.perf_counter()
    options = job.options
    _, rows = read_report_rows(job.reports_csv, options.required_columns())
    records = prepare_records(rows, options)
    if map_batches is None:
        parse_records(records, options, show_progress=True)
    else:
        outcomes = map_batches(records, functools.partial(parse_batch, options=options), record_key)
        by_key = {outcome.key: outcome for outcome in outcomes}
        for record in records:
            outcome = by_key.get(record_key(record))
            if outcome is None:
                continue
            if outcome.payload is not None:
                record.analysis, record.labels = outcome.payload
            elif outcome.status == "failed":
                record.status, record.reason = "failed", f"line {record.line}: parser crashed ({outcome.reason})"
    found, missing = apply_decomposition(records, options)
    by_llm, llm_fallback = apply_llm_decomposition(records, options)
    long_path, studies_path = write_tables(records, job.out_parquet, options.anatomy_set)
    return ParseReportsSummary(
        records, long_path, studies_path, time.perf_counter() - started, found, missing, by_llm, llm_fallback
    )
