"""A real Dask cluster from Dask's own CLIs on 127.0.0.1: ``dask scheduler`` + N ``dask worker`` processes.

The processes are started exactly as on several hosts (docs/orchestration.md, "Several machines"), each in a
session of its own, and stopped by their process group on exit (nanny and worker process together).

Also a measurement, run as a script (the cluster row of docs/convert.md's scale table)::

    .venv/bin/python -m tests.flows.dask_cluster [--studies 6] [--workers 2] [--repeat 3]

It generates a demo cohort, runs convert -> segment (precomputed) -> parse-reports -> shard through the stage
flows on the ``threads`` runner (``max_workers`` = the worker count) and against a 2-worker CLI cluster
(``dask_address``), interleaved ``--repeat`` times under one temporary Prefect server, and prints the median
wall seconds per study of each stage (flow run included), the cluster's start time and whether the outputs
agree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dask_cli() -> str:
    """The ``dask`` command of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("dask")
    return str(candidate) if candidate.is_file() else "dask"


@dataclass
class CliCluster:
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"== {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in self.logs)


def _stop(processes: list[subprocess.Popen], timeout_s: float = 20.0) -> None:
    """SIGTERM each process's group (the worker's nanny and its worker process), SIGKILL what is left."""
    for proc in reversed(processes):  # workers first, the scheduler last
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in processes:
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process of process group ``pgid`` is left (Linux /proc)."""
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@contextlib.contextmanager
def cli_cluster(
    work: Path,
    n_workers: int = 2,
    *,
    env: dict[str, str] | None = None,
    worker_args: tuple[str, ...] = (),
    gpu_workers: int = 0,
    timeout_s: float = 180.0,
) -> Iterator[CliCluster]:
    """``dask scheduler --host 127.0.0.1 --port P --no-dashboard`` + ``n_workers`` x ``dask worker
    tcp://127.0.0.1:P --nthreads 1 --nworkers 1``, the repository on the workers' ``PYTHONPATH`` (a host would
    have the project installed); the last ``gpu_workers`` workers advertise ``--resources GPU=1``. Yields once
    every worker has joined, stops every process on exit."""
    from distributed import Client

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p)
    child_env.setdefault("DASK_DISTRIBUTED__WORKER__DAEMON", "False")  # stages may start their own pools
    cluster = CliCluster(address)
    commands = [["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]]
    for k in range(n_workers):
        commands.append(
            [
                "worker",
                address,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--name",
                f"w{k}",
                "--no-dashboard",
                "--memory-limit",
                "0",
                "--local-directory",
                str(work / f"w{k}"),
                *worker_args,
                *(["--resources", "GPU=1"] if k >= n_workers - gpu_workers else []),
            ]
        )
    try:
        for k, command in enumerate(commands):
            log = work / (f"worker-{k - 1}.log" if k else "scheduler.log")
            cluster.logs.append(log)
            with open(log, "wb") as handle:
                cluster.processes.append(
                    subprocess.Popen(
                        [dask_cli(), *command],
                        cwd=REPO,
                        env=child_env,
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: stopped as a whole
                    )
                )
            if k == 0:
                _wait_for_port(port, timeout_s, cluster)
        with Client(address, timeout=timeout_s) as client:
            try:
                client.wait_for_workers(n_workers, timeout=timeout_s)
            except TimeoutError as error:
                raise RuntimeError(f"dask workers did not join:\n{cluster.log_tail()}") from error
        yield cluster
    finally:
        _stop(cluster.processes)


def _wait_for_port(port: int, timeout_s: float, cluster: CliCluster) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cluster.processes[0].poll() is not None:
            raise RuntimeError(f"dask scheduler exited:\n{cluster.log_tail()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"dask scheduler did not listen on {port}:\n{cluster.log_tail()}")


# ------------------------------------------------------------------------------------------ the stage chain
def run_data_stages(cohort: Path, work: Path, **fan_out_overrides: object) -> dict[str, float]:
    """convert -> segment (precomputed) -> parse-reports -> shard through the stage flows; wall s per stage."""
    from flows.stages import convert_flow, parse_reports_flow, segment_flow, shard_flow
    from tests.flows.stage_chain import convert_job, fan_out, parse_job, segment_job, shard_job

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    convert_flow(convert_job(cohort / "dicom", work / "converted"), fan_out(batch_size=1, **fan_out_overrides))
    seconds["convert"] = time.perf_counter() - started
    started = time.perf_counter()
    segment_flow(
        segment_job(work / "converted", work / "segmented", cohort / "masks"),
        fan_out(batch_size=1, **fan_out_overrides),
    )
    seconds["segment"] = time.perf_counter() - started
    started = time.perf_counter()
    parse_reports_flow(
        parse_job(cohort / "reports.csv", work / "reports" / "reports.parquet"),
        fan_out(batch_size=2, **fan_out_overrides),
    )
    seconds["parse-reports"] = time.perf_counter() - started
    started = time.perf_counter()
    summary = shard_flow(
        shard_job(work / "converted", work / "segmented", work / "reports" / "reports.parquet", work / "shards")
    )
    seconds["shard"] = time.perf_counter() - started
    seconds["shard_hash"] = summary.content_hash  # type: ignore[assignment]
    return seconds


def outputs_of(work: Path) -> dict[str, object]:
    """Everything the next stage reads, without timings and gzip time stamps."""
    import pyarrow.parquet as pq

    from tests.flows.test_stages import _stage_state

    state = _stage_state(work / "converted", work / "segmented")
    for name in ("reports.parquet", "reports.studies.parquet"):
        path = work / "reports" / name
        if path.is_file():
            state[name] = pq.read_table(path).to_pylist()
    return state


def main() -> None:
    import argparse
    import json
    import tempfile

    from core.env import apply_offline_env

    parser = argparse.ArgumentParser(description="stage flows: threads vs a CLI-started Dask cluster")
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs of each; medians are printed")
    args = parser.parse_args()
    apply_offline_env()
    import statistics

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from synthetic import generate_cohort

    stages = ("convert", "segment", "parse-reports", "shard")
    with tempfile.TemporaryDirectory(prefix="fvlm-dask-") as scratch, prefect_test_harness(server_startup_timeout=180):
        root = Path(scratch)
        generate_cohort(root / "cohort", studies=args.studies, seed=0, size="demo", workers=2)
        env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
        started = time.perf_counter()
        runs: dict[str, list[dict[str, float]]] = {"threads": [], "dask": []}
        same = True
        with cli_cluster(root / "cluster", args.workers, env=env) as cluster:
            cluster_start_s = time.perf_counter() - started
            for k in range(args.repeat):  # interleaved: the machine's load hits both alike
                runs["threads"].append(
                    run_data_stages(
                        root / "cohort", root / f"threads-{k}", task_runner="threads", max_workers=args.workers
                    )
                )
                runs["dask"].append(
                    run_data_stages(
                        root / "cohort", root / f"dask-{k}", task_runner="dask", dask_address=cluster.address
                    )
                )
                same = same and outputs_of(root / f"threads-{k}") == outputs_of(root / f"dask-{k}")
                same = same and runs["threads"][-1]["shard_hash"] == runs["dask"][-1]["shard_hash"]
        for name in stages:
            row = {"stage": name, "studies": args.studies, "repeat": args.repeat}
            for runner, label in (("threads", "threads"), ("dask", "cluster")):
                row[f"{label}_s_per_study"] = round(statistics.median(r[name] for r in runs[runner]) / args.studies, 3)
            print(json.dumps(row))
        totals = {
            runner: round(statistics.median(sum(r[n] for n in stages) for r in runs[runner]) / args.studies, 3)
            for runner in runs
        }
        print(
            json.dumps(
                {
                    "workers": args.workers,
                    "all_stages_s_per_study": totals,
                    "cluster_start_s": round(cluster_start_s, 1),
                    "outputs_identical": same,
                }
            )
        )


if __name__ == "__main__":
    main()
