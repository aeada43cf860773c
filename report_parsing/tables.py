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
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from report_parsing.io import ReportRow, read_report_rows
from report_parsing.sections import join_columns
from core.anatomy_sets import CTRATE_LABELS

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
    text_column: str | None = None           # one text holding Findings (+ Impression): wins when set
    anatomy_set: str = "ctrate4"
    salt: str = "fvlm-demo-salt-change-me"
    pseudonym_length: int = 16
    max_chars: int = 20_000
    scrub_phi: bool = True
    uncertain_is_positive: bool = True
    batch_size: int = 256
    n_process: int = 1
    hash_ids: bool = True                    # False: keep the id as is (label-reports keeps the input id)

    def required_columns(self) -> list[str]:
        if self.text_column:
            return [self.id_column, self.text_column]
        columns = [c for c in (self.findings_column, self.impression_column) if c]
        if not columns:
            raise ValueError("give a text column or at least one of findings / impression columns")
        return [self.id_column, *columns]


@dataclass
class StudyRecord:
    key: str                      # the input id (never written when hash_ids: may be PHI)
    study_id: str
    line: int
    status: str = "ok"
    reason: str = ""
    report_text: str = ""         # PHI-scrubbed text that was parsed (offsets refer to it)
    phi_replacements: int = 0
    analysis: Any = None          # ReportAnalysis for parsed rows
    labels: list[int] = field(default_factory=lambda: [-1] * len(CTRATE_LABELS))


def english_ratio(text: str) -> tuple[float, float, int]:
    """(share of English function words among words, share of ASCII among letters, word count)."""
    words = _WORD.findall(text[:5000])
    if not words:
        return 0.0, 0.0, 0
    letters = "".join(words)
    ascii_letters = sum(1 for ch in letters if ch.isascii())
    function_words = sum(1 for word in words if word.lower() in _ENGLISH_FUNCTION_WORDS)
    return function_words / len(words), ascii_letters / len(letters), len(words)


def prepare_records(rows: list[ReportRow], options: ParseOptions) -> list[StudyRecord]:
    """Status, id, scrubbed text per row (no parsing yet)."""
    from core.privacy import pseudonym
    from report_parsing.phi import scrub_phi

    records: list[StudyRecord] = []
    seen: set[str] = set()
    for row in rows:
        key = row.values.get(options.id_column, "").strip()
        study_id = pseudonym(key, options.salt, kind="study", length=options.pseudonym_length) if key and options.hash_ids else key
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
            record.reason = (f"line {row.line}: does not look like English "
                             f"(function words {function_share:.0%}, ASCII letters {ascii_share:.0%})")
            text = ""
        if options.scrub_phi and text:
            scrubbed = scrub_phi(text)
            text, record.phi_replacements = scrubbed.text, scrubbed.replaced
        record.report_text = text
    return records


def parse_records(records: list[StudyRecord], options: ParseOptions) -> None:
    """Run the spaCy pipeline over the parseable records (in place)."""
    from report_parsing.pipeline import analyze_many, cyclic_gc_paused

    todo = [record for record in records if record.status in PARSED_STATUSES]
    with cyclic_gc_paused():
        analyses = analyze_many(
            (record.report_text for record in todo), options.anatomy_set, batch_size=options.batch_size,
            n_process=options.n_process, uncertain_is_positive=options.uncertain_is_positive,
        )
        for record, analysis in zip(todo, analyses):
            record.analysis = analysis
            record.labels = list(analysis.labels)


def parse_reports_file(path: str | Path, options: ParseOptions) -> list[StudyRecord]:
    _, rows = read_report_rows(path, options.required_columns())
    records = prepare_records(rows, options)
    parse_records(records, options)
    return records


def anatomy_rows(records: list[StudyRecord], anatomy_set: str) -> Iterator[dict[str, Any]]:
    """One row per parsed study x anatomy (+ ``other``)."""
    from report_parsing.analyze import anatomy_sentence_indices
    from core.anatomy_sets import load_anatomy_set

    names = list(load_anatomy_set(anatomy_set).anatomy_names)
    for record in records:
        analysis = record.analysis
        if analysis is None:
            continue
        per_anatomy = anatomy_sentence_indices(analysis, len(names))
        for index, name in enumerate([*names, "other"]):
            sentence_indices = per_anatomy[index]
            spans = [analysis.sentences[i] for i in sentence_indices]
            yield {
                "study_id": record.study_id,
                "anatomy": name,
                "anatomy_index": index,
                "text": " ".join(record.report_text[a:b] for a, b in spans),
                "abnormal": bool(analysis.anatomy_abnormal[index]) if index < len(names)
                else any(analysis.sentence_abnormal[i] for i in sentence_indices),
                "n_sentences": len(sentence_indices),
                "sentence_starts": [a for a, _ in spans],
                "sentence_ends": [b for _, b in spans],
                "sentence_sections": [analysis.sentence_sections[i] for i in sentence_indices],
                "sentence_abnormal": [bool(analysis.sentence_abnormal[i]) for i in sentence_indices],
            }


def write_tables(records: list[StudyRecord], out_path: str | Path, anatomy_set: str) -> tuple[Path, Path]:
    """OUT.parquet (study x anatomy) and OUT.studies.parquet (per study), both atomic."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.io import atomic_path
    from core.anatomy_sets import load_anatomy_set

    out_path = Path(out_path)
    studies_path = out_path.with_name(out_path.name.removesuffix(".parquet") + ".studies.parquet")
    anatomy_names = list(load_anatomy_set(anatomy_set).anatomy_names)
    metadata = {
        b"fvlm.anatomy_set": anatomy_set.encode(),
        b"fvlm.anatomies": json.dumps([*anatomy_names, "other"]).encode(),
        b"fvlm.labels": json.dumps(list(CTRATE_LABELS)).encode(),
        b"fvlm.offsets": b"sentence_starts/ends are character offsets into studies.report_text",
    }
    long_schema = pa.schema(
        [
            ("study_id", pa.string()), ("anatomy", pa.string()), ("anatomy_index", pa.int16()), ("text", pa.string()),
            ("abnormal", pa.bool_()), ("n_sentences", pa.int32()), ("sentence_starts", pa.list_(pa.int32())),
            ("sentence_ends", pa.list_(pa.int32())), ("sentence_sections", pa.list_(pa.string())),
            ("sentence_abnormal", pa.list_(pa.bool_())),
        ],
        metadata=metadata,
    )
    long_table = pa.Table.from_pylist(list(anatomy_rows(records, anatomy_set)), schema=long_schema)
    study_columns: dict[str, list[Any]] = {
        "study_id": [], "status": [], "reason": [], "report_text": [], "n_sentences": [], "has_findings": [],
        "has_impression": [], "phi_replacements": [],
    }
    label_columns: dict[str, list[int]] = {label: [] for label in CTRATE_LABELS}
    for record in records:
        # a repeated id would give two rows one study_id: only the first row keeps it
        study_id = None if record.status in ("missing_id", "duplicate_id") else record.study_id
        analysis = record.analysis
        study_columns["study_id"].append(study_id)
        study_columns["status"].append(record.status)
        study_columns["reason"].append(record.reason)
        study_columns["report_text"].append(record.report_text)
        study_columns["n_sentences"].append(len(analysis.sentences) if analysis else 0)
        study_columns["has_findings"].append(bool(analysis and analysis.has_findings))
        study_columns["has_impression"].append(bool(analysis and analysis.has_impression))
        study_columns["phi_replacements"].append(record.phi_replacements)
        for label, value in zip(CTRATE_LABELS, record.labels):
            label_columns[label].append(value)
    study_schema = pa.schema(
        [
            ("study_id", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("report_text", pa.string()),
            ("n_sentences", pa.int32()), ("has_findings", pa.bool_()), ("has_impression", pa.bool_()),
            ("phi_replacements", pa.int32()), *[(label, pa.int8()) for label in CTRATE_LABELS],
        ],
        metadata=metadata,
    )
    study_table = pa.Table.from_pydict({**study_columns, **label_columns}, schema=study_schema)
    with atomic_path(out_path) as tmp:
        pq.write_table(long_table, tmp, compression="zstd")
    with atomic_path(studies_path) as tmp:
        pq.write_table(study_table, tmp, compression="zstd")
    return out_path, studies_path
