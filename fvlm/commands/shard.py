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
    from fvlm.commands import load_config_from_args, run_stage_as_flow
    from preprocessing.shards import build_shards

    config = load_config_from_args(args)
    converted = config.path(args.converted or config.paths.converted)
    segmented = config.path(args.segmented or config.paths.segmented)
    reports = config.path(args.reports or config.paths.reports_table)
    out = config.path(args.out or config.paths.shards)
    metrics = config.path(args.metrics) if args.metrics else config.path(config.paths.metrics) / "shard.json"
    try:
        if run_stage_as_flow(config):
            from flows.stages import shard_from_config

            summary = shard_from_config(
                config, converted=converted, segmented=segmented, reports=reports, out=out, metrics=metrics,
                workers=args.workers,
            )
        else:
            summary = build_shards(
                converted,
                segmented,
                reports,
                out,
                anatomy_set=config.segment.anatomy_set,
                grid=config.grid,
                split=config.split,
                shard=config.shard,
                metrics_path=metrics,
                workers=args.workers,
            )
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
