"""``fvlm demo``: the main job on the bundled synthetic cohort: raw dataset, ``dvc repro``, ``dvc push``.

1. The raw dataset (``paths.raw_dataset``, data/demo: DICOM tree, reports.csv, masks) is data, not a
   stage output: when it is absent it is checked out from its ``.dvc`` file, or generated with
   ``fvlm demo-data`` (params ``demo_data``) and versioned with ``dvc add``. When it is present, ``dvc add``
   records it as it is (studies the ingest flow added included); it is never regenerated or checked
   out over (``--regenerate`` does that on request).
2. ``dvc repro`` (every stage, paths from params.yaml), then ``dvc push`` to the local remote.

The commands log to the stores ``fvlm services up`` serves (MLflow SQLite and PREFECT_HOME under
``services.data_dir``, or the running servers): the UIs show the demo's runs afterwards.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline on the synthetic demo cohort (dataset, dvc repro, dvc push)"
    )
    parser.add_argument("--no-push", action="store_true", help="skip `dvc push` to the local remote")
    parser.add_argument(
        "--regenerate", action="store_true", help="generate the demo dataset anew (params demo_data) and `dvc add` it"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
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
        result = subprocess.run(command, cwd=root, env=env)
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
    for command, shown in steps:
        code = step(command, shown)
        if code != 0:
            return code
    print(f"fvlm demo: finished in {time.perf_counter() - started:.0f} s")
    metrics_dir = config.path(config.paths.metrics)
    for metrics_file in sorted(metrics_dir.glob("*.json")):
        try:
            summary = json.loads(metrics_file.read_text())
        except json.JSONDecodeError:
            continue
        flat = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
        print(f"  {metrics_file.relative_to(root)}: {json.dumps(flat)[:300]}")
    print(f"fvlm demo: raw dataset {relative} is versioned by {relative}.dvc; commit it with dvc.lock and metrics/")
    return 0
