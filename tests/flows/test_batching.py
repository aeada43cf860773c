"""run_batched: fan-out over batches, outcomes, retries on transient errors only, artifacts."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from flows.batching import (
    ItemOutcome,
    TransientError,
    artifact_key_for,
    chunked,
    is_transient,
    process_batch,
    run_batched,
)
from tests.flows.batch_functions import flaky_batch_factory, pid_batch, poison_batch, square_batch


def test_chunked_keeps_order_and_sizes() -> None:
    assert list(chunked(list(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []
    with pytest.raises(ValueError):
        list(chunked([1], 0))


def test_is_transient_separates_infrastructure_from_bad_data() -> None:
    assert is_transient(TransientError("gpu busy"))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.EBUSY, "busy"))
    assert not is_transient(OSError(errno.ENOENT, "missing"))
    assert not is_transient(ValueError("bad pixel spacing"))
    assert not is_transient(KeyError("PatientID"))


def test_artifact_key_is_prefect_safe() -> None:
    assert artifact_key_for("Parse Reports!") == "parse-reports-summary"


def test_process_batch_isolates_a_poisonous_item() -> None:
    report = process_batch(poison_batch, [11, 12, 13, 14], index=0)
    assert report.isolated
    status = {o.key: o.status for o in report.outcomes}
    assert status == {"11": "ok", "12": "ok", "13": "failed", "14": "ok"}
    failed = [o for o in report.outcomes if o.status == "failed"][0]
    assert "ValueError" in failed.reason and "unlucky" in failed.reason


def test_process_batch_reraises_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientError):
        process_batch(flaky_batch_factory(tmp_path, failures=1), [1, 2], index=0)


def test_missing_outcomes_count_as_ok() -> None:
    report = process_batch(lambda batch: None, [1, 2], index=0)
    assert [o.status for o in report.outcomes] == ["ok", "ok"]


def test_bad_status_is_rejected() -> None:
    with pytest.raises(ValueError):
        ItemOutcome("x", "weird")  # type: ignore[arg-type]


@pytest.mark.usefixtures("prefect_harness")
class TestRunBatchedUnderPrefect:
    def test_counts_batches_and_markdown_artifact(self) -> None:
        from prefect import flow
        from prefect.client.orchestration import get_client

        @flow(name="square-flow")
        def square_flow(n: int):
            return run_batched(list(range(n)), square_batch, batch_size=4, stage="square", retry_delay_s=0)

        summary = square_flow(10)
        assert summary.counts == {"ok": 5, "skipped": 0, "quarantined": 5, "failed": 0}
        assert summary.n_batches == 3
        assert summary.succeeded
        assert "| quarantined | 5 |" in summary.markdown and "odd number" in summary.markdown

        import asyncio

        async def latest_markdown() -> str:
            async with get_client() as client:
                artifact = await client.read_latest_artifacts()
                by_key = {a.key: a for a in artifact}
                return by_key["square-summary"].data

        assert "| ok | 5 |" in asyncio.run(latest_markdown())

    def test_skip_keys_do_no_work(self) -> None:
        from prefect import flow

        @flow(name="skip-flow")
        def skip_flow():
            return run_batched(
                list(range(6)), square_batch, batch_size=2, stage="skip", skip_keys={"0", "1", "2", "3", "4", "5"}
            )

        summary = skip_flow()
        assert summary.n_batches == 0
        assert summary.counts["skipped"] == 6

    def test_transient_failures_are_retried(self, tmp_path: Path) -> None:
        from prefect import flow

        flaky = flaky_batch_factory(tmp_path, failures=2)

        @flow(name="flaky-flow")
        def flaky_flow():
            return run_batched([1, 2, 3], flaky, batch_size=2, stage="flaky", retries=2, retry_delay_s=0)

        summary = flaky_flow()
        assert summary.counts["ok"] == 3
        assert (tmp_path / "batch-1").read_text() == "3"  # 2 transient failures + 1 success

    def test_retries_exhausted_marks_batch_failed_and_cohort_goes_on(self, tmp_path: Path) -> None:
        from prefect import flow

        flaky = flaky_batch_factory(tmp_path, failures=5)

        @flow(name="exhaust-flow")
        def exhaust_flow():
            return run_batched([1, 2, 3], flaky, batch_size=2, stage="exhaust", retries=1, retry_delay_s=0)

        summary = exhaust_flow()
        assert summary.counts["failed"] == 3
        assert not summary.succeeded
        assert all("after 1 retries" in o.reason for o in summary.outcomes)

    def test_bad_data_is_not_retried(self) -> None:
        from prefect import flow

        calls: list[list[int]] = []

        def counting_poison(batch: list[int]) -> list[ItemOutcome]:
            calls.append(list(batch))
            return poison_batch(batch)

        @flow(name="poison-flow")
        def poison_flow():
            return run_batched([12, 13], counting_poison, batch_size=2, stage="poison", retries=3, retry_delay_s=0)

        summary = poison_flow()
        assert {o.key: o.status for o in summary.outcomes} == {"12": "ok", "13": "failed"}
        assert calls == [[12, 13], [12], [13]]  # once as a batch, then item by item; no retries
        assert summary.isolated_batches == 1

    def test_process_pool_runner(self) -> None:
        from prefect import flow

        @flow(name="process-flow")
        def process_flow():
            return run_batched(list(range(8)), pid_batch, batch_size=4, task_runner="processes", stage="procs")

        summary = process_flow()
        assert summary.counts["ok"] == 8
        import os

        assert str(os.getpid()) not in {o.reason for o in summary.outcomes}

    @pytest.mark.slow  # starts a distributed.LocalCluster (5-25 s)
    def test_dask_local_cluster_runner(self) -> None:
        pytest.importorskip("prefect_dask")
        from prefect import flow

        @flow(name="dask-flow")
        def dask_flow():
            return run_batched(list(range(6)), square_batch, batch_size=2, task_runner="dask", stage="dask")

        summary = dask_flow()
        assert summary.counts == {"ok": 3, "skipped": 0, "quarantined": 3, "failed": 0}
        assert summary.task_runner == "dask"


def test_outcome_keys_must_match_item_keys() -> None:
    report = process_batch(lambda batch: [ItemOutcome("other")], [1], index=0)
    assert report.outcomes[0].status == "failed" and "item_key" in report.outcomes[0].reason


class WeightsGone(RuntimeError):
    pass


def _fatal_batch(batch: list[int]) -> list[ItemOutcome]:
    raise WeightsGone("no model weights")


def test_fatal_errors_end_the_batch_instead_of_failing_items() -> None:
    with pytest.raises(WeightsGone):
        process_batch(_fatal_batch, [1, 2], index=0, fatal_errors=(WeightsGone,))


def test_redacted_errors_keep_only_the_type() -> None:
    report = process_batch(poison_batch, [13], index=0, redact_errors=True)
    assert report.outcomes[0].reason.startswith("ValueError") and "unlucky" not in report.outcomes[0].reason
