"""The batch-mapping seam between a stage library and whoever runs its batches.

A stage library's entry point (``run_convert``, ``run_segment``, ``run_parse_reports``) cuts its work
into items and hands them to a :data:`MapBatches` callable::

    map_batches(items, batch_fn, key_fn) -> list[ItemOutcome]   # one outcome per item

``batch_fn(list_of_items)`` returns one :class:`ItemOutcome` per item (``payload`` = the stage's result
for that item, e.g. a manifest row); ``key_fn(item)`` is the item's PHI-free key (a study_id). The
library's default is its own local execution (one batch in-process, or a process pool); the
Prefect flows pass a mapper that fans the batches out over a task runner (``flows.batching``). An item
whose batch crashed comes back with status ``failed`` and no payload; the library turns it into a
quarantined row with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Item = TypeVar("Item")
OutcomeStatus = Literal["ok", "skipped", "quarantined", "failed"]
OUTCOME_STATUSES: tuple[str, ...] = ("ok", "skipped", "quarantined", "failed")


@dataclass(frozen=True)
class ItemOutcome:
    """What happened to one item (study) in a stage. ``key`` must be PHI-free (a study_id)."""

    key: str
    status: OutcomeStatus = "ok"
    reason: str = ""
    qc_path: str | None = None
    payload: Any = field(default=None, compare=False, repr=False)  # stage result (e.g. a manifest row)

    def __post_init__(self) -> None:
        if self.status not in OUTCOME_STATUSES:
            raise ValueError(f"ItemOutcome.status must be one of {OUTCOME_STATUSES}, got {self.status!r}")


BatchFn = Callable[[list[Any]], Sequence[ItemOutcome]]
KeyFn = Callable[[Any], str]
MapBatches = Callable[[Sequence[Any], BatchFn, KeyFn], list[ItemOutcome]]
