"""``fvlm shard``: converted volumes + masks + parsed reports -> patient-split Parquet shards."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "shard",
        help="join volumes, anatomy masks and parsed reports into train/val/test Parquet shards",
        description=(
            "Reads CONVERTED/studies.parquet + volumes/, SEGMENTED/masks/ and the parse-reports tables; "
            "writes SHARDS/{train,val,test}/part-*.parquet, SHARDS/manifest.json and a metrics JSON. "
            "Defaults come from params.yaml (paths.*, grid.*, split.*, shard.*)."
        ),
        examples=[
            ("fvlm shard", "paths.* in, paths.shards out"),
            ("fvlm shard --out /tmp/shards --metrics /tmp/shard.json --workers 4", "elsewhere, 4 processes"),
        ],
    )
    arg(parser, "--converted", default=None, key="paths.converted", help="convert output dir")
    arg(parser, "--segmented", default=None, key="paths.segmented", help="segment output dir")
    arg(parser, "--reports", default=None, key="paths.reports_table", help="parse-reports long table")
    arg(parser, "--out", default=None, key="paths.shards", help="shards dir")
    arg(parser, "--metrics", default=None, key="{paths.metrics}/shard.json", help="metrics JSON")
    arg(parser, "--workers", type=int, default=None, key="shard.workers", help="preparation processes")
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
