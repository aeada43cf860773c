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
    parse = subparsers.add_parser(
        "parse-reports", help="reports CSV -> per study x anatomy text / abnormal table + per-study labels (Parquet)"
    )
    parse.add_argument("reports_csv", help="CSV with an id column and Findings / Impression (or one text) columns")
    parse.add_argument("out_parquet", help="output OUT.parquet (OUT.studies.parquet is written next to it)")
    _add_text_options(parse)
    parse.add_argument("--anatomy-set", default=None, help="anatomy set (default: segment.anatomy_set)")
    parse.set_defaults(handler=run_parse)

    label = subparsers.add_parser("label-reports", help="reports CSV -> CSV of the 18 CT-RATE labels (0/1)")
    label.add_argument("in_csv")
    label.add_argument("out_csv")
    _add_text_options(label, text_default="report_text", id_default="AccessionNo")
    label.add_argument("--no-status", action="store_true", help="omit the per-row status column")
    label.set_defaults(handler=run_label)

    evaluate = subparsers.add_parser(
        "eval-labels", help="per-label precision / recall / F1 of predicted vs gold labels"
    )
    evaluate.add_argument("pred_csv")
    evaluate.add_argument("gold_csv")
    evaluate.add_argument("--id-column", default=None, help="join column (default: first column of GOLD.csv)")
    evaluate.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    evaluate.set_defaults(handler=run_eval)


def _add_text_options(
    parser: argparse.ArgumentParser, text_default: str | None = None, id_default: str | None = None
) -> None:
    parser.add_argument("--id-column", default=id_default, help="id column (default: reports.id_column)")
    parser.add_argument("--findings-column", default=None, help="findings column (default: reports.findings_column)")
    parser.add_argument(
        "--impression-column", default=None, help="impression column (default: reports.impression_column)"
    )
    parser.add_argument(
        "--text-column",
        default=text_default,
        help="one column holding the whole report (Findings then Impression); wins over the two above",
    )
    parser.add_argument(
        "--n-process", type=int, default=None, help="spaCy worker processes (default: reports.n_process)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="nlp.pipe batch size (default: reports.batch_size)"
    )


def _option_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The text options given on the command line (``None``: use params.yaml)."""
    return {
        "id_column": args.id_column,
        "findings_column": args.findings_column,
        "impression_column": args.impression_column,
        "text_column": args.text_column,
        "anatomy_set": getattr(args, "anatomy_set", None),
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
    from report_parsing.tables import PARSED_STATUSES, ParseReportsJob, run_parse_reports

    started = time.perf_counter()
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
    from report_parsing.tables import PARSED_STATUSES, ParseOptions, parse_reports_file

    options = ParseOptions.from_config(load_config_from_args(args), hash_ids=False, **_option_overrides(args))
    try:
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
