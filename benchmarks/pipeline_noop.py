"""Benchmark: an incremental stage run with 0 new of N already-processed studies (synthetic manifest).

What a nightly ingest costs when nothing arrived: the stage flow reads its manifest (Parquet, one row per
study with the source hash), finds that every study is done, submits no task and writes its summary
artifact. Peers measured in the same run: the same flow with K new studies (trivial batch work), and the
whole command as a fresh process (what DVC starts) against a running Prefect server.

    .venv/bin/python benchmarks/pipeline_noop.py [--studies 1000] [--new 10]

Target: < 10 s for the 0-new run of 1,000 studies.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.env import apply_offline_env  # noqa: E402

apply_offline_env()

from flows.batching import ItemOutcome  # noqa: E402


def synthetic_inputs(n: int) -> list[tuple[str, str]]:
    """(study_id, source_hash) of n studies, as discovery would report them."""
    return [(f"study{i:06d}", hashlib.sha256(str(i).encode()).hexdigest()) for i in range(n)]


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"study_id": [r[0] for r in rows], "source_hash": [r[1] for r in rows], "status": ["ok"] * len(rows)}
    )
    pq.write_table(table, path)


def trivial_batch(batch: list[tuple[str, str]]) -> list[ItemOutcome]:
    return [ItemOutcome(_key(item), "ok", payload=item) for item in batch]


def _key(item: tuple[str, str]) -> str:
    return f"{item[0]}:{item[1]}"


def incremental_stage(manifest: str, n_studies: int, n_new: int) -> dict[str, int]:
    """The stage-flow body: manifest -> done keys -> run_batched over the rest -> manifest update."""
    import pyarrow.parquet as pq

    from flows.batching import run_batched

    table = pq.read_table(manifest, columns=["study_id", "source_hash"]).to_pydict()
    done = {f"{s}:{h}" for s, h in zip(table["study_id"], table["source_hash"], strict=True)}
    items = synthetic_inputs(n_studies + n_new)
    summary = run_batched(
        items, trivial_batch, batch_size=16, stage="noop-bench", item_key=_key, skip_keys=done, retry_delay_s=0
    )
    if summary.counts["ok"]:
        write_manifest(Path(manifest), [p for p in summary.payloads()] + [i for i in items if _key(i) in done])
    return summary.counts


def _flow():
    from prefect import flow

    return flow(name="noop-bench")(incremental_stage)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--new", type=int, default=10)
    parser.add_argument("--child", nargs=3, metavar=("MANIFEST", "N", "NEW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # a fresh process, as `dvc repro` starts a stage command
        started = time.perf_counter()
        counts = _flow()(args.child[0], int(args.child[1]), int(args.child[2]))
        print(f"child: {counts} in {time.perf_counter() - started:.2f} s (flow call)")
        return 0

    from flows import services
    from tests.flows.conftest import free_port

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        manifest = tmp / "studies.parquet"
        data_dir = tmp / "svc"
        specs = services.service_specs(data_dir, prefect_port=free_port(), mlflow_port=free_port())
        started = time.perf_counter()
        services.start(data_dir, specs, ["prefect"], timeout_s=180, die_with_parent=True)
        server_s = time.perf_counter() - started
        api_url = specs["prefect"].health_url.removesuffix("/health")
        os.environ["PREFECT_API_URL"] = api_url
        try:
            stage = _flow()
            write_manifest(manifest, synthetic_inputs(args.studies))
            stage(str(manifest), args.studies, 0)  # warm-up: client, flow registration
            timings: dict[str, float] = {}
            started = time.perf_counter()
            counts = stage(str(manifest), args.studies, 0)
            timings["noop_in_process"] = time.perf_counter() - started
            assert counts["ok"] == 0 and counts["skipped"] == args.studies, counts
            started = time.perf_counter()
            counts = stage(str(manifest), args.studies, args.new)
            timings["k_new_in_process"] = time.perf_counter() - started
            assert counts["ok"] == args.new, counts
            # the manifest now holds studies + new: a fresh process with 0 new (the DVC-started command)
            started = time.perf_counter()
            child = subprocess.run(
                [sys.executable, __file__, "--child", str(manifest), str(args.studies), str(args.new)],
                capture_output=True,
                text=True,
                env={**os.environ, "PREFECT_API_URL": api_url},
                check=True,
            )
            timings["noop_fresh_process"] = time.perf_counter() - started
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import prefect"], check=True)
            timings["python_import_prefect"] = time.perf_counter() - started
        finally:
            services.stop(data_dir, specs, ["prefect"])
    print(f"studies already processed: {args.studies}; new in the peer run: {args.new}")
    print(f"prefect server start (fresh SQLite):           {server_s:6.2f} s")
    print(f"0 new, flow call in a warm process:            {timings['noop_in_process']:6.2f} s")
    print(f"{args.new} new, flow call in a warm process:           {timings['k_new_in_process']:6.2f} s")
    print(
        f"0 new, fresh process (as DVC starts it):       {timings['noop_fresh_process']:6.2f} s"
        f"   [{child.stdout.strip()}]"
    )
    print(f"  of which `python -c 'import prefect'`:       {timings['python_import_prefect']:6.2f} s")
    print(
        f"ratio 0-new / {args.new}-new (warm):                   "
        f"{timings['noop_in_process'] / timings['k_new_in_process']:6.2f}"
    )
    target = 10.0
    verdict = "PASS" if timings["noop_fresh_process"] < target else "FAIL"
    print(f"target: 0-new fresh process < {target:.0f} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
