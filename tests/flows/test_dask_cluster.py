"""The data-stage flows on a real Dask cluster started with Dask's own CLIs (``dask scheduler``, ``dask worker``)
on 127.0.0.1, as on several hosts: same outputs as the ``threads`` runner, one warm predictor per worker,
GPU batches only on the workers that advertise a GPU, no process left behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("prefect_dask")

from tests.flows.dask_cluster import (  # noqa: E402
    CliCluster,
    cli_cluster,
    dask_cli,
    group_alive,
    outputs_of,
    run_data_stages,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]  # a cluster start is 10-60 s

STUDIES = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, studies=STUDIES, seed=0, size="demo", workers=2)
    return root


@pytest.fixture(scope="module")
def standin_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TOTALSEG_HOME_DIR with random-weight stand-in models (the workers' TotalSegmentator)."""
    from core.env import ensure_totalseg_config
    from segmentation.standin_weights import build_standin_weights

    home = tmp_path_factory.mktemp("totalseg_home")
    ensure_totalseg_config(home)
    build_standin_weights(home / "nnunet" / "results", ("fast",))
    return home


@pytest.fixture(scope="module")
def cluster(
    prefect_harness: None, standin_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CliCluster]:
    """scheduler + 2 workers (``--nthreads 1``); the second advertises ``--resources GPU=1``."""
    if shutil.which(dask_cli()) is None:
        pytest.skip("the dask CLI is not installed")
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "TOTALSEG_HOME_DIR": str(standin_home)}
    work = tmp_path_factory.mktemp("dask")
    with cli_cluster(work, 2, env=env, gpu_workers=1) as started:
        yield started
    leftovers = [proc.pid for proc in started.processes if group_alive(proc.pid)]
    assert not leftovers, f"dask processes left behind (process groups {leftovers})"


@pytest.fixture(scope="module")
def threads_run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    work = tmp_path_factory.mktemp("threads")
    return work, run_data_stages(cohort, work, task_runner="threads")


def test_data_stages_on_the_cluster_equal_a_threads_run(
    cohort: Path,
    cluster: CliCluster,
    threads_run: tuple[Path, dict[str, float]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flows.batching

    summaries: list[flows.batching.RunSummary] = []
    real = flows.batching.run_batched

    def recording(*args, **kwargs):
        summaries.append(real(*args, **kwargs))
        return summaries[-1]

    monkeypatch.setattr(flows.batching, "run_batched", recording)
    seconds = run_data_stages(cohort, tmp_path, task_runner="dask", dask_address=cluster.address)
    assert [summary.task_runner for summary in summaries] == ["dask"] * 3  # convert, segment, parse-reports
    assert all(summary.succeeded and summary.counts["ok"] for summary in summaries)
    reference, reference_seconds = threads_run
    assert outputs_of(tmp_path) == outputs_of(reference)
    assert seconds["shard_hash"] == reference_seconds["shard_hash"]


def _on_workers(cluster: CliCluster, function) -> dict[str, object]:
    from distributed import Client

    with Client(cluster.address) as client:
        return client.run(function)


def test_one_warm_predictor_per_worker_across_batches(
    cluster: CliCluster, threads_run: tuple[Path, dict[str, float]], tmp_path: Path
) -> None:
    """TotalSegmentator (stand-in weights, CPU), one study per batch: each worker builds its predictor once."""
    from flows.stages import segment_flow
    from segmentation import totalseg
    from segmentation.stage import SegmentJob, warm_backend_stats
    from tests.flows.stage_chain import fan_out

    before = _on_workers(cluster, warm_backend_stats)
    loads_before = _on_workers(cluster, totalseg.predictor_loads)
    job = SegmentJob(
        inputs=threads_run[0] / "converted", output_dir=tmp_path, backend="totalsegmentator", device="cpu", qc=False
    )
    summary = segment_flow(job, fan_out(batch_size=1, task_runner="dask", dask_address=cluster.address))
    assert summary.n_ok == STUDIES, summary.text()
    after = _on_workers(cluster, warm_backend_stats)
    loads_after = _on_workers(cluster, totalseg.predictor_loads)
    loads = {worker: loads_after[worker] - loads_before[worker] for worker in after}
    reused = {worker: after[worker]["reused"] - before[worker]["reused"] for worker in after}
    assert all(count <= 1 for count in loads.values()), loads  # never a second predictor in one worker
    assert sum(loads.values()) + sum(reused.values()) == STUDIES  # every batch: a load or a warm reuse
    assert max(reused.values()) >= 1  # 3 batches on 2 single-threaded workers: one worker reused its own
    assert len({after[worker]["pid"] for worker in after}) == 2


def test_gpu_batches_go_to_the_gpu_worker_only(cluster: CliCluster) -> None:
    from prefect import flow

    from flows.batching import run_batched
    from tests.flows.batch_functions import pid_batch

    address = cluster.address  # the flow (pickled with each task run's context) must not hold the Popen objects

    @flow(name="dask-gpu-resources")
    def tagged(tags: list[str]):
        return run_batched(list(range(6)), pid_batch, 1, "dask", stage="gpu-check", dask_address=address, tags=tags)

    workers = _worker_info(cluster)
    gpu_worker_pids = {str(info["pid"]) for info in workers.values() if info["resources"].get("GPU")}
    assert len(gpu_worker_pids) == 1 and len(workers) == 2
    assert {outcome.reason for outcome in tagged(["gpu"]).outcomes} == gpu_worker_pids
    assert {outcome.reason for outcome in tagged([]).outcomes} <= {str(info["pid"]) for info in workers.values()}


def _worker_info(cluster: CliCluster) -> dict[str, dict]:
    from distributed import Client

    with Client(cluster.address) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        pids = client.run(os.getpid)
    return {
        address: {"pid": pids[address], "resources": info.get("resources") or {}} for address, info in workers.items()
    }
