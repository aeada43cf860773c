"""``fvlm pipeline``: the end-to-end run (dvc pull -> dvc repro -> dvc push -> report) as a Prefect flow."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from core.config import FvlmConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "pipeline",
        help="run the whole DAG: dvc pull, dvc repro, dvc push; report metrics and the MLflow run/version",
        description=(
            "A Prefect flow: dvc pull (when a remote is configured), dvc repro, dvc push, then a report of "
            "metrics/*.json, the MLflow run and the registered model version. The flow and every stage command "
            "of the repro share one Prefect server: the running services' (`fvlm services up`), else one "
            "temporary server for the run."
        ),
        examples=[
            ("fvlm pipeline", "everything that is stale"),
            ("fvlm pipeline shard --no-push", "up to the shards, nothing pushed"),
            ("fvlm pipeline train --force --json", "re-run training, report as JSON"),
        ],
    )
    arg(parser, "targets", nargs="*", help="dvc.yaml stages to reproduce (default: all)")
    arg(parser, "--no-pull", action="store_true", help="do not `dvc pull` first")
    arg(parser, "--no-push", action="store_true", help="do not `dvc push` afterwards")
    arg(
        parser,
        "--allow-missing-remote",
        action="store_true",
        help="go on with what is local when `dvc pull` fails (default: a failed pull stops the run)",
    )
    arg(parser, "--force", action="store_true", help="`dvc repro --force` (re-run stages)")
    arg(parser, "--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args

    config = load_config_from_args(args)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    if config.tracking.prefect_api_url:
        import os

        os.environ.setdefault("PREFECT_API_URL", config.tracking.prefect_api_url)
    from flows.services import ServiceError, shared_prefect_server

    try:  # one server for this flow and every stage command `dvc repro` starts (none when services run)
        with shared_prefect_server(
            timeout_s=config.services.startup_timeout_s, log_dir=config.path(config.services.data_dir) / "logs"
        ):
            return _run_flow(args, config)
    except ServiceError as error:
        print(f"fvlm pipeline: {error}", file=sys.stderr)
        return 1


def _run_flow(args: argparse.Namespace, config: FvlmConfig) -> int:
    import contextlib
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline_flow
    from flows.subprocesses import CommandError

    url = os.environ.get("PREFECT_API_URL")
    # Prefect reads its settings once, at import: a process that imported it before the server started
    # (a caller of fvlm.cli.main) still talks to the run's server, not to a temporary one of its own
    settings = temporary_settings({PREFECT_API_URL: url}) if url else contextlib.nullcontext()
    try:
        with settings:
            report = pipeline_flow(
                repo_root=str(config.root),
                targets=list(args.targets),
                pull=not args.no_pull,
                push=not args.no_push,
                force=args.force,
                metrics_dir=config.paths.metrics,
                tracking_uri=config.tracking.mlflow_tracking_uri,
                registered_model=config.tracking.registered_model,
                promote_alias=config.evaluate.promote_alias,
                allow_missing_remote=args.allow_missing_remote,
            )
    except CommandError as error:
        print(f"fvlm pipeline: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(
        f"pipeline: repro done in {report['seconds'].get('repro', 0):.1f} s; "
        f"remote {report['remote'] or 'none'} (pulled: {report['pulled']}, pushed: {report['pushed']})"
    )
    print(
        f"MLflow run: {report['mlflow_run_id'] or '-'}"
        + (f" (evaluation run {report['eval_run_id']})" if report["eval_run_id"] else "")
    )
    print(
        f"registered model: {report['registered_model']} version {report['registry_version'] or '-'}"
        + (f", promoted to @{report['promoted_alias']}" if report["promoted_alias"] else "")
        + (f"; champion is version {report['champion_version']}" if report["champion_version"] else "")
    )
    for name, values in sorted(report["metrics"].items()):  # numbers only; identifiers are in the lines above
        numbers = {key: value for key, value in values.items() if not isinstance(value, str)}
        print(f"metrics/{name}.json: {json.dumps(numbers, default=str)[:200]}")
    return 0
