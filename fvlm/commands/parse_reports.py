"""``fvlm parse-reports``, ``fvlm label-reports``, ``fvlm eval-labels``: the report-parsing stage.

* ``parse-reports REPORTS.csv OUT.parquet``: per study x anatomy table (+ ``OUT.studies.parquet``);
* ``label-reports IN.csv OUT.csv``: the 18 CT-RATE labels (0/1) per report, keyed by the input id;
* ``eval-labels PRED.csv GOLD.csv``: per-label precision / recall / F1, macro and weighted averages.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parse = add_command(
        subparsers,
        "parse-reports",
        help="reports CSV -> per study x anatomy text / abnormal table + per-study labels (Parquet)",
        description=(
            "Split each report into sentences, assign them to the anatomies of the anatomy set, flag abnormal "
            "findings (negation, uncertainty) and the 18 CT-RATE labels, scrub PHI and write OUT.parquet "
            "(study x anatomy) and OUT.studies.parquet (per study: status, labels). Study ids are pseudonymised "
            "with privacy.salt."
        ),
        examples=[
            ("fvlm parse-reports data/demo/reports.csv data/reports/reports.parquet", "what `dvc repro` runs"),
            (
                "fvlm parse-reports reports.csv out.parquet --text-column report_text --id-column AccessionNo",
                "one text column",
            ),
            ("fvlm parse-reports reports.csv out.parquet --n-process 4", "4 spaCy processes"),
            (
                "fvlm parse-reports train_reports.csv out.parquet --id-column VolumeName --decomposition fvlm_data/",
                "CT-RATE with fVLM's released desc_info.json / conc_info.json as the anatomy text",
            ),
        ],
    )
    arg(parse, "reports_csv", path=True, help="CSV with an id column and Findings / Impression (or one text) columns")
    arg(parse, "out_parquet", path=True, help="output OUT.parquet (OUT.studies.parquet is written next to it)")
    _add_text_options(parse)
    arg(parse, "--anatomy-set", default=None, key="segment.anatomy_set", help="anatomy set")
    arg(
        parse,
        "--decomposition",
        default=None,
        key="reports.decomposition",
        path=True,
        help="fVLM desc_info.json / conc_info.json (a folder or one file): the per-anatomy text, instead of the "
        "rules; labels stay from the labeller",
    )
    arg(
        parse,
        "--llm-endpoint",
        default=None,
        help="optional: OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1) that writes the per-anatomy text; "
        "answers are validated, a report with a bad answer keeps the rule-based text (key: $FVLM_LLM_API_KEY)",
    )
    arg(parse, "--llm-model", default="", help="model name for --llm-endpoint")
    parse.set_defaults(handler=run_parse)

    label = add_command(
        subparsers,
        "label-reports",
        help="reports CSV -> CSV of the 18 CT-RATE labels (0/1)",
        description=(
            "Label each report with the 18 CT-RATE abnormality labels (0/1) and write OUT.csv keyed by the input "
            "id (kept as is), plus a status column. Without column options the layout is read from the header: "
            "the configured reports.* columns (the demo's reports.csv: study_key, Findings, Impression), else "
            "CT-RATE's radiology report CSVs (VolumeName, Findings_EN + Impressions_EN), else CT-CLIP's text "
            "classifier CSVs (AccessionNo, report_text); a file that fits none is refused with its columns listed."
        ),
        examples=[
            ("fvlm label-reports data/demo/reports.csv labels.csv", "the demo's reports (configured columns)"),
            ("fvlm label-reports train_reports.csv labels.csv", "CT-RATE reports: VolumeName, Findings_EN, ..."),
            (
                "fvlm label-reports ct_clip/train.csv pred.csv && fvlm eval-labels pred.csv ct_clip/train.csv",
                "CT-CLIP labelled reports, scored against their manual labels",
            ),
            ("fvlm label-reports in.csv out.csv --id-column id --text-column text", "name the columns"),
        ],
    )
    arg(label, "in_csv", help="reports CSV (demo, CT-RATE or CT-CLIP layout, or name the columns)")
    arg(label, "out_csv", help="output CSV: id, the 18 labels, status")
    _add_text_options(label, detect=True)
    arg(label, "--no-status", action="store_true", help="omit the per-row status column")
    label.set_defaults(handler=run_label)

    evaluate = add_command(
        subparsers,
        "eval-labels",
        help="per-label precision / recall / F1 of predicted vs gold labels",
        description=(
            "Join PRED.csv and GOLD.csv on the id column and report precision, recall and F1 per CT-RATE label "
            "present in both, with macro and weighted averages."
        ),
        examples=[
            ("fvlm eval-labels pred.csv gold.csv", "join on GOLD.csv's first column"),
            ("fvlm eval-labels pred.csv gold.csv --id-column AccessionNo --json report.json", "also as JSON"),
        ],
    )
    arg(evaluate, "pred_csv", help="predicted labels (e.g. from label-reports)")
    arg(evaluate, "gold_csv", help="gold labels (id column + CT-RATE label columns)")
    arg(evaluate, "--id-column", default=None, help="join column (default: first column of GOLD.csv)")
    arg(evaluate, "--json", dest="json_out", default=None, help="also write the report as JSON here")
    evaluate.set_defaults(handler=run_eval)


def _add_text_options(parser: argparse.ArgumentParser, detect: bool = False) -> None:
    from fvlm.commands._help import arg

    then = "; with no column option the layout is detected from the header, these first" if detect else ""
    arg(parser, "--id-column", default=None, key="reports.id_column", help=f"id column{then}")
    arg(parser, "--findings-column", default=None, key="reports.findings_column", help=f"findings column{then}")
    arg(parser, "--impression-column", default=None, key="reports.impression_column", help=f"impression column{then}")
    arg(
        parser,
        "--text-column",
        default=None,
        key="reports.text_column",
        help="one column holding the whole report (Findings then Impression); wins over the two above",
    )
    arg(parser, "--n-process", type=int, default=None, key="reports.n_process", help="spaCy worker processes")
    arg(parser, "--batch-size", type=int, default=None, key="reports.batch_size", help="nlp.pipe batch size")


def _option_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The text options given on the command line (``None``: use params.yaml)."""
    return {
        "id_column": args.id_column,
        "findings_column": args.findings_column,
        "impression_column": args.impression_column,
        "text_column": args.text_column,
        "anatomy_set": getattr(args, "anatomy_set", None),
        **({"decomposition": args.decomposition} if getattr(args, "decomposition", None) else {}),
        **(
            {"llm_endpoint": args.llm_endpoint, "llm_model": args.llm_model}
            if getattr(args, "llm_endpoint", None)
            else {}
        ),
        "batch_size": args.batch_size,
        "n_process": args.n_process,
    }


def _status_summary(records) -> str:
    from collections import Counter

    counts = Counter(record.status for record in records)
    return ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))


def run_parse(args: argparse.Namespace) -> int:
    import time

    from fvlm.commands import load_config_from_args, run_stage
    from report_parsing.io import ReportsFileError
    from report_parsing.pipeline import import_spacy_without_torch
    from report_parsing.tables import PARSED_STATUSES, ParseReportsJob, run_parse_reports

    started = time.perf_counter()
    import_spacy_without_torch()  # thinc's torch import cost more than parsing 1,600 reports (docs: Speed)
    config = load_config_from_args(args)
    job = ParseReportsJob.from_config(
        config, reports_csv=args.reports_csv, out_parquet=args.out_parquet, **_option_overrides(args)
    )
    try:
        result = run_stage(config, job, run_parse_reports, "parse_reports_flow", {"batch_size": job.options.batch_size})
    except (ReportsFileError, ValueError, KeyError) as error:
        print(f"fvlm: {error}", file=sys.stderr)
        return 2
    records = result.records
    seconds = time.perf_counter() - started
    parsed = sum(record.status in PARSED_STATUSES for record in records)
    print(
        f"parse-reports: {len(records)} rows ({_status_summary(records)}) in {seconds:.1f} s, "
        f"anatomy set {job.options.anatomy_set}"
    )
    print(f"  {result.long_path}  ({parsed} studies x anatomies)")
    if job.options.llm_endpoint:
        print(
            f"  anatomy text from the LLM at {job.options.llm_endpoint}: {result.by_llm} studies "
            f"({result.llm_fallback} kept the rule-based text: request failed or answer invalid)"
        )
    if job.options.decomposition:
        print(
            f"  anatomy text from {job.options.decomposition}: {result.decomposed} studies "
            f"({result.not_in_decomposition} not in it kept the rule-based text)"
        )
    print(f"  {result.studies_path}")
    for record in records:
        if record.status not in PARSED_STATUSES:
            print(f"  {record.status}: {record.reason}", file=sys.stderr)
    return 0 if parsed else 1


def run_label(args: argparse.Namespace) -> int:
    import csv
    import io

    from core.anatomy_sets import CTRATE_LABELS
    from core.io import atomic_write_text
    from fvlm.commands import load_config_from_args
    from report_parsing.io import ReportsFileError
    from report_parsing.pipeline import import_spacy_without_torch
    from report_parsing.tables import PARSED_STATUSES, ParseOptions, parse_reports_file

    import_spacy_without_torch()
    options = ParseOptions.from_config(load_config_from_args(args), hash_ids=False, **_option_overrides(args))
    try:
        if all(getattr(args, name) is None for name in _COLUMN_OPTIONS):
            options, layout = _detected_options(args.in_csv, options)
            print(f"label-reports: {args.in_csv}: {layout}", file=sys.stderr)
        records = parse_reports_file(args.in_csv, options)
    except (ReportsFileError, ValueError, KeyError) as error:
        print(f"fvlm: {error}", file=sys.stderr)
        return 2
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([options.id_column, *CTRATE_LABELS, *([] if args.no_status else ["status"])])
    for record in records:
        values = [max(0, value) for value in record.labels]  # unknown (-1) written as 0; see status
        writer.writerow([record.key, *values, *([] if args.no_status else [record.status])])
    atomic_write_text(args.out_csv, buffer.getvalue())
    parsed = sum(record.status in PARSED_STATUSES for record in records)
    print(f"label-reports: {len(records)} rows ({_status_summary(records)}) -> {args.out_csv}")
    return 0 if parsed else 1


_COLUMN_OPTIONS = ("id_column", "findings_column", "impression_column", "text_column")


def _detected_options(path: str, options: Any) -> tuple[Any, str]:
    """``options`` with the columns of the layout the file's header fits (configured first)."""
    import dataclasses

    from report_parsing.layouts import ReportLayout, detect_layout

    configured = ReportLayout(
        "params.yaml reports.*",
        options.id_column,
        options.findings_column,
        options.impression_column,
        options.text_column,
    )
    layout = detect_layout(path, configured)
    columns = {name: getattr(layout, name) for name in _COLUMN_OPTIONS}
    return dataclasses.replace(options, **columns), layout.describe()


def run_eval(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import pandas as pd

    from core.anatomy_sets import CTRATE_LABELS
    from core.io import atomic_write_text
    from report_parsing.evaluation import format_label_report, label_report

    frames = {}
    for name, path in (("pred", args.pred_csv), ("gold", args.gold_csv)):
        try:
            frames[name] = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            print(f"fvlm: {path}: cannot read CSV: {error}", file=sys.stderr)
            return 2
    pred, gold = frames["pred"], frames["gold"]
    id_column = args.id_column or gold.columns[0]
    for frame, path in ((pred, args.pred_csv), (gold, args.gold_csv)):
        if id_column not in frame.columns:
            print(f"fvlm: {path}: no id column {id_column!r}", file=sys.stderr)
            return 2
    labels = [label for label in CTRATE_LABELS if label in pred.columns and label in gold.columns]
    if not labels:
        print("fvlm: no CT-RATE label column is present in both files", file=sys.stderr)
        return 2
    merged = gold[[id_column, *labels]].merge(pred[[id_column, *labels]], on=id_column, suffixes=("_gold", "_pred"))
    if merged.empty:
        print(f"fvlm: no id of {args.pred_csv} matches {args.gold_csv} on {id_column!r}", file=sys.stderr)
        return 2

    def matrix(suffix: str) -> np.ndarray:
        values = merged[[f"{label}{suffix}" for label in labels]].apply(pd.to_numeric, errors="coerce").fillna(0)
        return (values.to_numpy() > 0).astype(int)

    report = label_report(matrix("_gold"), matrix("_pred"), labels)
    print(
        f"eval-labels: {len(merged)} reports matched on {id_column!r} "
        f"({len(gold) - len(merged)} gold rows without prediction), {len(labels)} labels"
    )
    print(format_label_report(report, labels))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(report, indent=2))
    return 0
