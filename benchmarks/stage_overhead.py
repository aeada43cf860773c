"""Benchmark: what a stage command costs over its library call (convert, parse-reports; same run).

On a generated demo cohort (``fvlm demo-data``, 20 studies by default) each stage runs three ways, each
into a fresh output folder so each does the same work:

* **library**: ``run_convert(job)`` / ``run_parse_reports(job)`` timed around the call alone, in a
  fresh process that has imported the stage module (so the lazy imports the call does count, as they do
  for the command, and neither call profits from the other's);
* **command, no server**: ``python -m fvlm.cli <stage> ...`` as a fresh process with no Prefect server
  (what a lone command or ``dvc repro`` without ``fvlm services up`` does: the library, no temporary
  server);
* **command, shared server**: the same with ``PREFECT_API_URL`` of one server started once for the run
  (what ``fvlm demo`` / ``fvlm pipeline`` give the stage commands of their ``dvc repro``): the stage
  flow, recorded in Prefect.

    .venv/bin/python benchmarks/stage_overhead.py [--studies 20] [--repeats 3] [--no-server]

Each figure is the median of ``--repeats`` runs, the three ways interleaved (a load spike hits all).

Target: command, no server <= 1.5x the library call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.env import apply_offline_env  # noqa: E402

apply_offline_env()


def _command(params: Path, stage_args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "fvlm.cli", "--params", str(params), *stage_args],
        cwd=params.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"fvlm {' '.join(stage_args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def _library(stage: str, source: str, out: str, params: str) -> float:
    """The library call alone, timed in this process (run as ``--library`` in a fresh process)."""
    from core.config import load_config

    config = load_config(params)
    if stage == "convert":
        from preprocessing.convert import ConvertJob, run_convert

        job = ConvertJob.from_config(config, input_dir=source, output_dir=out)
        started = time.perf_counter()
        run_convert(job)
    else:
        from report_parsing.tables import ParseReportsJob, run_parse_reports

        parse_job = ParseReportsJob.from_config(config, reports_csv=source, out_parquet=out)
        started = time.perf_counter()
        run_parse_reports(parse_job)
    return time.perf_counter() - started


def _library_in_child(stage: str, source: Path, out: Path, params: Path, env: dict[str, str]) -> float:
    result = subprocess.run(
        [sys.executable, __file__, "--library", stage, str(source), str(out), str(params)],
        cwd=params.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"library {stage} failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-server", action="store_true", help="skip the shared-server runs")
    parser.add_argument("--library", nargs=4, metavar=("STAGE", "IN", "OUT", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.library:
        print(f"{_library(*args.library):.4f}")
        return 0

    from flows.services import shared_prefect_server
    from synthetic.cohort import generate_cohort

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        shutil.copy(REPO / "params.yaml", tmp / "params.yaml")
        started = time.perf_counter()
        generate_cohort(tmp / "demo", studies=args.studies, workers=2)
        print(f"demo cohort: {args.studies} studies generated in {time.perf_counter() - started:.1f} s")
        params = tmp / "params.yaml"
        dicom, reports = tmp / "demo" / "dicom", tmp / "demo" / "reports.csv"
        env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "FVLM_NO_FLOWS")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PREFECT_HOME"] = str(tmp / "prefect-home")

        rows: list[tuple[str, float, float, float | None]] = []
        stages = {
            "convert": (dicom, lambda out: ["convert", str(dicom), str(tmp / out)], "converted"),
            "parse-reports": (reports, lambda out: ["parse-reports", str(reports), str(tmp / out / "r.parquet")], "r"),
        }
        timings: dict[tuple[str, str], list[float]] = {}
        server_s = None
        os.environ.pop("PREFECT_API_URL", None)
        os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            served_env = None
            if not args.no_server:
                server = stack.enter_context(shared_prefect_server(timeout_s=300))
                server_s = time.perf_counter() - started
                served_env = {**env, "PREFECT_API_URL": server.api_url}
            for repeat in range(args.repeats):
                for stage, (source, make, name) in stages.items():
                    out = tmp / f"lib-{stage}-{repeat}" / (f"{name}.parquet" if name == "r" else name)
                    timings.setdefault((stage, "library"), []).append(
                        _library_in_child(stage, source, out, params, env)
                    )
                    timings.setdefault((stage, "command"), []).append(
                        _command(params, make(f"cmd-{stage}-{repeat}"), env)
                    )
                    if served_env is not None:
                        timings.setdefault((stage, "served"), []).append(
                            _command(params, make(f"srv-{stage}-{repeat}"), served_env)
                        )
        for stage in stages:
            served = timings.get((stage, "served"))
            rows.append(
                (
                    stage,
                    statistics.median(timings[(stage, "library")]),
                    statistics.median(timings[(stage, "command")]),
                    statistics.median(served) if served else None,
                )
            )

    load = os.getloadavg()[0]
    print(f"load average {load:.1f}, {os.cpu_count()} CPUs")
    if server_s is not None:
        print(f"shared Prefect server start (once per run): {server_s:.1f} s")
    print(f"{'stage':14s} {'library':>9s} {'command':>9s} {'ratio':>6s} {'cmd+server':>11s} {'ratio':>6s}")
    verdict = "PASS"
    for stage, lib_s, cmd_s, srv_s in rows:
        ratio = cmd_s / lib_s
        verdict = verdict if ratio <= 1.5 else "FAIL"
        served_cells = f"{srv_s:10.2f}s {srv_s / lib_s:5.2f}x" if srv_s is not None else f"{'-':>11s} {'-':>6s}"
        print(f"{stage:14s} {lib_s:8.2f}s {cmd_s:8.2f}s {ratio:5.2f}x {served_cells}")
    print(f"target: command (no server) <= 1.5x library: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
