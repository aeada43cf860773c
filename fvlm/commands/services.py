"""``fvlm services up | down | status``: local Prefect + MLflow servers (and optionally a Prefect worker)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "services",
        help="start / stop / check the local Prefect and MLflow servers (UIs on 127.0.0.1)",
        description="Prefect server + MLflow server with SQLite backends under services.data_dir; "
        "PID files in <data_dir>/run, logs in <data_dir>/logs. While they run, every fvlm command (and the "
        "stage commands `dvc repro` starts) reports to them, on the ports `up` chose (read from the PID files).",
        examples=[
            ("fvlm services up", "Prefect :4200 and MLflow :5000"),
            ("fvlm services up --worker", "plus a process worker for `prefect deploy --all`"),
            ("fvlm services status", "exit 0 when both answer their health URLs, else 3"),
            ("fvlm services up --only prefect --prefect-port 4300", "Prefect only, another port"),
            ("fvlm services down", "stop them (by PID file)"),
        ],
    )
    arg(
        parser,
        "action",
        choices=["up", "down", "status"],
        help="up: start (and wait for health); down: stop; status: show, exit 3 unless healthy",
    )
    arg(
        parser,
        "--only",
        action="append",
        choices=["prefect", "mlflow", "worker"],
        default=None,
        help="act on this service only (repeatable; default: prefect and mlflow, plus the worker with --worker)",
    )
    arg(parser, "--worker", action="store_true", help="also start a Prefect process worker for the work pool")
    arg(parser, "--data-dir", default=None, key="services.data_dir", help="databases, logs and PID files")
    arg(parser, "--prefect-port", type=int, default=None, key="services.prefect_port", help="Prefect server port")
    arg(parser, "--mlflow-port", type=int, default=None, key="services.mlflow_port", help="MLflow server port")
    arg(
        parser,
        "--timeout",
        type=float,
        default=None,
        key="services.startup_timeout_s",
        help="seconds to wait for health (up)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from flows import services
    from fvlm.commands import load_config_from_args

    config = load_config_from_args(args)
    cfg = config.services
    data_dir = config.path(args.data_dir or cfg.data_dir)
    # a port given here wins; else the one the running service was started on (its PID record); else params
    prefect_port = args.prefect_port or services.recorded_port(data_dir, "prefect") or cfg.prefect_port
    mlflow_port = args.mlflow_port or services.recorded_port(data_dir, "mlflow") or cfg.mlflow_port
    specs = services.service_specs(
        data_dir,
        host=cfg.host,
        prefect_port=prefect_port,
        mlflow_port=mlflow_port,
        work_pool=config.orchestration.work_pool,
    )
    if args.only:
        names = list(dict.fromkeys(args.only))
    elif args.action == "up":
        names = [*services.DEFAULT_SERVICES, *(["worker"] if args.worker else [])]
    else:
        names = list(services.SERVICE_NAMES)
    if args.action == "up":
        try:
            states = services.start(
                data_dir, specs, names, timeout_s=args.timeout or cfg.startup_timeout_s, cwd=config.root
            )
        except services.ServiceError as error:
            print(f"fvlm services: {error}", file=sys.stderr)
            return 1
        for state in states:
            print(state.line())
        env_file, env = services.write_client_env(data_dir)
        print(
            "   ".join(
                f"{name.capitalize() if name == 'prefect' else 'MLflow'} UI: {specs[name].url}"
                for name in ("prefect", "mlflow")
                if name in names
            )
        )
        print(
            "fvlm commands find these services by their PID files; other clients: "
            f"source {env_file}   (or export {' '.join(f'{k}={v}' for k, v in env.items())})"
        )
        return 0
    if args.action == "down":
        for state in services.stop(data_dir, specs, names):
            print(f"{state.name:8s} {state.detail}" + (f" (pid {state.pid})" if state.pid else ""))
        if (data_dir / "services.env").exists():
            services.write_client_env(data_dir)  # only what still runs
        return 0
    states = services.status(data_dir, specs, names)
    for state in states:
        print(state.line())
    wanted = [s for s in states if s.name in (args.only or services.DEFAULT_SERVICES)]
    return 0 if all(state.healthy for state in wanted) else 3
