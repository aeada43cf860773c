"""``fvlm deploy``: serve the scheduled deployments (nightly ingest, weekly train + evaluate + promote)."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "deploy",
        help="serve the cron-scheduled ingest and train deployments on the Prefect server (long-running)",
        description="Runs `prefect.serve` for the ingest (orchestration.ingest_cron) and train + evaluate "
        "(orchestration.train_cron) deployments until interrupted. Needs a Prefect server: "
        "`fvlm services up` and PREFECT_API_URL (or tracking.prefect_api_url). For a work pool instead, "
        "use `prefect deploy --all` with prefect.yaml.",
        examples=[
            ("fvlm services up && fvlm deploy", "serve both deployments on their cron schedules"),
            ("fvlm deploy --dry-run", "print the deployments and their schedules"),
            ("fvlm deploy --only ingest --watch-dir /incoming --settle 300", "ingest only, another folder"),
        ],
    )
    arg(
        parser,
        "--only",
        choices=["ingest", "train"],
        action="append",
        default=None,
        help="serve only this deployment (repeatable; default: both)",
    )
    arg(
        parser,
        "--interval",
        type=float,
        default=None,
        help="schedule every N seconds instead of the cron expressions (testing)",
    )
    arg(parser, "--watch-dir", default=None, key="orchestration.watch_dir", help="ingest watch folder")
    arg(
        parser,
        "--settle",
        type=float,
        default=None,
        help="seconds a watched folder must be unchanged before it is ingested (default: 60)",
    )
    arg(parser, "--no-push", action="store_true", help="deployments do not `dvc push`")
    arg(
        parser,
        "--targets",
        nargs="+",
        default=None,
        help="dvc.yaml stages the ingest deployment reproduces (default: shard)",
    )
    arg(parser, "--limit", type=int, default=1, help="flow runs executing at once in this process")
    arg(parser, "--dry-run", action="store_true", help="print the deployments and exit")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.config import find_params
    from fvlm.commands import load_config_from_args

    config = load_config_from_args(args)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    found = Path(args.params) if args.params else find_params()
    params_path = found.resolve() if found else config.root / "params.yaml"
    which = tuple(args.only or ("ingest", "train"))
    ingest_parameters: dict[str, object] = {}
    if args.watch_dir:
        ingest_parameters["watch_dir"] = str(config.path(args.watch_dir).resolve())
    if args.settle is not None:
        ingest_parameters["settle_s"] = args.settle
    if args.targets:
        ingest_parameters["targets"] = list(args.targets)
    if args.no_push:
        ingest_parameters["push"] = False
    train_parameters: dict[str, object] = {"push": False} if args.no_push else {}

    api_url = os.environ.get("PREFECT_API_URL") or config.tracking.prefect_api_url
    if not api_url and not args.dry_run:
        print(
            "fvlm deploy: schedules need a Prefect server; run `fvlm services up` and export "
            "PREFECT_API_URL=http://127.0.0.1:<port>/api (or set tracking.prefect_api_url)",
            file=sys.stderr,
        )
        return 2
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    from flows.deployments import build_deployments

    deployments = build_deployments(
        config,
        params_path,
        which=which,
        interval_s=args.interval,
        ingest_parameters=ingest_parameters,
        train_parameters=train_parameters,
    )
    for deployment in deployments:
        schedules = [
            str(getattr(s.schedule, "cron", None) or getattr(s.schedule, "interval", ""))
            for s in deployment.schedules or []
        ]
        print(
            f"deployment {deployment.flow_name}/{deployment.name}: schedule {', '.join(schedules)}; "
            f"parameters {deployment.parameters}"
        )
    if args.dry_run:
        return 0
    print(f"serving on {api_url} (Ctrl-C to stop)")
    from prefect import serve

    serve(*deployments, limit=args.limit)
    return 0
