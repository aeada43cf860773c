"""Trivial, picklable batch functions for the run_batched tests (module level for process/dask runners)."""

from __future__ import annotations

import os
from pathlib import Path

from flows.batching import ItemOutcome, TransientError


def square_batch(batch: list[int]) -> list[ItemOutcome]:
    """ok for even numbers, quarantined for odd ones (bad data is an outcome, not an exception)."""
    return [
        ItemOutcome(str(n), "ok") if n % 2 == 0 else ItemOutcome(str(n), "quarantined", "odd number") for n in batch
    ]


def poison_batch(batch: list[int]) -> list[ItemOutcome]:
    """Raises a non-transient error whenever 13 is in the batch."""
    if 13 in batch:
        raise ValueError("13 is unlucky")
    return [ItemOutcome(str(n)) for n in batch]


def flaky_batch_factory(counter_dir: Path, failures: int):
    """A batch function that raises TransientError the first ``failures`` calls per batch."""

    def flaky(batch: list[int]) -> list[ItemOutcome]:
        marker = counter_dir / f"batch-{batch[0]}"
        calls = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(calls + 1))
        if calls < failures:
            raise TransientError(f"busy (call {calls + 1})")
        return [ItemOutcome(str(n)) for n in batch]

    return flaky


def pid_batch(batch: list[int]) -> list[ItemOutcome]:
    return [ItemOutcome(str(n), "ok", reason=str(os.getpid())) for n in batch]
