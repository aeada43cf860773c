"""``fvlm shard``: converted volumes + masks + parsed reports -> patient-split Parquet shards."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shard",
        help="join volumes, anatomy masks and parsed reports into train/val/test Parquet shards",
        description=(
            "Reads CONVERTED/studies.parquet + volumes/, SEGMENTED/masks/ and the parse-reports tables; "
            "writes SHARDS/{train,val,test}/part-*.parquet, SHARDS/manifest.json and a metrics JSON. "
            "Defaults come from params.yaml (paths.*, grid.*, split.*, shard.*)."
        ),
    )
    parser.add_argument("--converted", default=None, help="convert output dir (default: paths.converted)")
    parser.add_argument("--segmented", default=None, help="segment output dir (default: paths.segmented)")
    parser.add_argument("--reports", default=None, help="parse-reports long table (default: paths.reports_table)")
    parser.add_argument("--out", default=None, help="shards dir (default: paths.shards)")
    parser.add_argument("--metrics", default=None, help="metrics JSON (default: <paths.metrics>/shard.json)")
    parser.add_argument("--workers", type=int, default=None, help="preparation processes (default: shard.workers)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args, run_stage
    from preprocessing.shards import ShardJob, run_shard

    config = load_config_from_args(args)
    job = ShardJob.from_config(
        config,
        converted_dir=args.converted,
        segmented_dir=args.segmented,
        reports_table=args.reports,
        out_dir=args.out,
        metrics_path=args.metrics,
        workers=args.workers,
    )
    try:
        summary = run_stage(config, job, run_shard, "shard_flow")
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"fvlm shard: {error}", file=sys.stderr)
        return 1
    print(summary.describe())
    for item in summary.quarantined:
        print(f"  quarantined {item['study_id']}: {item['reason']}")
    print(f"manifest: {summary.manifest_path}")
    if summary.written == 0:
        print("fvlm shard: no study could be sharded", file=sys.stderr)
        return 1
    return 0
