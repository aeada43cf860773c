"""``fvlm demo``: the main job on the bundled synthetic cohort: raw dataset, ``dvc repro``, ``dvc push``.

1. The raw dataset (``paths.raw_dataset``, data/demo: DICOM tree, reports.csv, masks) is data, not a
   stage output: when it is absent it is checked out from its ``.dvc`` file, or generated with
   ``fvlm demo-data`` (params ``demo_data``) and versioned with ``dvc add``. When it is present, ``dvc add``
   records it as it is (studies the ingest flow added included); it is never regenerated or checked
   out over (``--regenerate`` does that on request).
2. ``dvc repro`` (every stage, paths from params.yaml), then ``dvc push`` to the local remote, with one
   Prefect server for all stage commands: the running services' (``fvlm services up``), else one
   temporary server for the run (``flows.services.shared_prefect_server``) whose URL the stage
   commands get in ``PREFECT_API_URL``.

The commands log to the stores ``fvlm services up`` serves (MLflow SQLite and PREFECT_HOME under
``services.data_dir``, or the running servers): the UIs show the demo's runs afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "demo",
        help="run the whole pipeline on the synthetic demo cohort (dataset, dvc repro, dvc push)",
        description=(
            "Generate (or check out) the demo dataset paths.raw_dataset, `dvc add` it, then `dvc repro` every "
            "stage and `dvc push` to the local remote. All stage commands share one Prefect server: the "
            "running `fvlm services up` one, else one temporary server for the run (its flow runs land in "
            "services.data_dir, which `fvlm services up` serves afterwards)."
        ),
        examples=[
            ("fvlm demo", "the whole demo: data, all stages, push"),
            ("fvlm services up && fvlm demo", "the same, flow runs live in the Prefect UI (127.0.0.1:4200)"),
            ("fvlm demo --no-push --regenerate", "new demo data (params demo_data), nothing pushed"),
        ],
    )
    arg(parser, "--no-push", action="store_true", help="skip `dvc push` to the local remote")
    arg(
        parser,
        "--regenerate",
        action="store_true",
        help="generate the demo dataset anew (params demo_data) and `dvc add` it",
    )
    parser.set_defaults(handler=run)


def _prefect_url() -> dict[str, str]:
    import os

    url = os.environ.get("PREFECT_API_URL")
    return {"PREFECT_API_URL": url} if url else {}


def run(args: argparse.Namespace) -> int:
    import os
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    from fvlm.commands import load_config_from_args

    config = load_config_from_args(args)
    root = config.root
    env = dict(os.environ)
    # stage commands run `fvlm`/`python` from the same environment as this process
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    dvc = [sys.executable, "-m", "dvc"]
    fvlm = [sys.executable, "-m", "fvlm.cli"]
    started = time.perf_counter()

    def step(command: list[str], shown: str) -> int:
        print(f"fvlm demo: $ {shown}", flush=True)
        result = subprocess.run(command, cwd=root, env={**env, **_prefect_url()})
        if result.returncode != 0:
            print(f"fvlm demo: `{shown}` failed (exit {result.returncode})", file=sys.stderr)
        return result.returncode

    dataset = config.path(config.paths.raw_dataset)
    try:
        relative = str(dataset.resolve().relative_to(root.resolve()))
    except ValueError:
        print(
            f"fvlm demo: paths.raw_dataset {dataset} is outside the repository; the demo generates its "
            "dataset inside it (README, 'Your own data', for a dataset elsewhere)",
            file=sys.stderr,
        )
        return 2
    tracked = dataset.with_name(dataset.name + ".dvc")
    if args.regenerate and dataset.exists():
        shutil.rmtree(dataset)
    if not dataset.exists() and tracked.is_file() and not args.regenerate:
        code = step([*dvc, "checkout", str(tracked.relative_to(root))], f"dvc checkout {tracked.relative_to(root)}")
        if code != 0 or not dataset.exists():
            code = step([*dvc, "pull", str(tracked.relative_to(root))], f"dvc pull {tracked.relative_to(root)}")
            if code != 0:
                return code
    if not dataset.exists():
        code = step([*fvlm, "demo-data", relative], f"fvlm demo-data {relative}")
        if code != 0:
            return code
    code = step([*dvc, "add", "-q", relative], f"dvc add {relative}")  # record the dataset as it is
    if code != 0:
        return code
    steps = [([*dvc, "repro"], "dvc repro")]
    if not args.no_push:
        steps.append(([*dvc, "push", "-q"], "dvc push"))
    from flows.services import ServiceError, shared_prefect_server

    try:  # one Prefect server for every stage command of the repro (none started when services run)
        with shared_prefect_server(
            timeout_s=config.services.startup_timeout_s,
            log_dir=config.path(config.services.data_dir) / "logs",
            or_none=True,  # a busy machine: the stages run without Prefect rather than not at all
        ) as server:
            if server.started:
                print(
                    f"fvlm demo: temporary Prefect server {server.ui_url} (UI; API {server.api_url}) for this run",
                    flush=True,
                )
            elif server.failure:
                print(
                    f"fvlm demo: no Prefect server for this run ({server.failure.splitlines()[0]}); the stages "
                    "run without Prefect (their manifests and stage-runs.jsonl record them)",
                    file=sys.stderr,
                    flush=True,
                )
            for command, shown in steps:
                code = step(command, shown)
                if code != 0:
                    return code
    except ServiceError as error:
        print(f"fvlm demo: {error}", file=sys.stderr)
        return 1
    print(f"fvlm demo: finished in {time.perf_counter() - started:.0f} s")
    metrics_dir = config.path(config.paths.metrics)
    for line in learned_summary(metrics_dir, root):
        print(line)
    print(f"fvlm demo: raw dataset {relative} is versioned by {relative}.dvc; commit it with dvc.lock and metrics/")
    return 0


def learned_summary(metrics_dir: Path, root: Path) -> list[str]:
    """Did the demo model learn? Loss first-10 vs last-10, test mean AUC with its CI, the gate's decision."""
    import json

    from core.metrics_files import read_metrics_and_info

    def read(name: str) -> dict:  # the numbers and, beside them, the identifiers and reasons (<name>.info.json)
        try:
            return read_metrics_and_info(metrics_dir / name)
        except (OSError, json.JSONDecodeError):
            return {}

    def shown(path: Path) -> str:
        try:
            return str(path.relative_to(root))
        except ValueError:
            return str(path)

    train, evaluation = read("train.json"), read("eval.json")
    lines = ["fvlm demo: what the model learned"]
    first, last = train.get("first_loss_avg"), train.get("final_loss_avg")
    if isinstance(first, (int, float)) and isinstance(last, (int, float)):
        trend = "falling" if last < first else "NOT falling"
        lines.append(
            f"  training loss {trend}: first-10 mean {first:.3f} -> last-10 mean {last:.3f} over "
            f"{train.get('steps')} steps (curve: {shown(metrics_dir / 'plots' / 'train_loss.png')})"
        )
    mean_auc, ci = evaluation.get("mean_auc"), [evaluation.get("mean_auc_ci_low"), evaluation.get("mean_auc_ci_high")]
    if isinstance(mean_auc, (int, float)):
        ci_text = ""
        verdict = ""
        if all(isinstance(c, (int, float)) for c in ci):
            ci_text = f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})"
            verdict = "; above chance" if ci[0] > 0.5 else "; NOT clearly above chance (CI reaches 0.5)"
        lines.append(
            f"  zero-shot test mean AUC {mean_auc:.3f}{ci_text} on {evaluation.get('n_test')} test studies{verdict}"
        )
    if "promoted" in evaluation:
        reason = evaluation.get("promotion_reason")
        decision = "promoted" if evaluation["promoted"] else "not promoted"
        lines.append(f"  registry: {decision}" + (f" ({reason})" if reason else ""))
    for name in ("train.json", "eval.json"):
        if (metrics_dir / name).is_file():
            lines.append(f"  {shown(metrics_dir / name)}")
    return lines
