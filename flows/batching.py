"""Generic batched fan-out for stage flows: :func:`run_batched`.

One Prefect task per *batch* of studies (tens per task, not one task per file: thousands of tiny task
runs overload Prefect's API and database). A batch function takes a list of items and returns one
:class:`ItemOutcome` per item (``ok`` / ``skipped`` / ``quarantined`` / ``failed`` + reason).

Failure policy (bad data is quarantined, never retried; infrastructure hiccups are retried):

* the batch function quarantines bad studies itself and returns their outcome;
* an exception classified *transient* by :func:`is_transient` (connection resets, timeouts, EAGAIN/EBUSY,
  a locked SQLite database, :class:`TransientError`) fails the task run, and Prefect retries it with
  exponential backoff and jitter, at most ``retries`` times;
* any other exception means a bug or an unexpected input: the batch is re-run one item at a time so
  that one poisonous study does not take its batch-mates down; the items that still raise are recorded
  as ``failed`` with the exception type and message, and the cohort goes on.

Every call records counts (processed / skipped / quarantined / failed, with reasons), timing and links
to QC pictures in a Prefect markdown artifact, and reports progress in a progress artifact and the log.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core.batches import OUTCOME_STATUSES, BatchFn, ItemOutcome, KeyFn, MapBatches, OutcomeStatus

if TYPE_CHECKING:  # pragma: no cover
    from core.config import OrchestrationConfig

Item = TypeVar("Item")
__all__ = ["OUTCOME_STATUSES", "FanOut", "ItemOutcome", "OutcomeStatus", "RunSummary", "prefect_batches", "run_batched"]

logger = logging.getLogger("fvlm.flows")

_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.EINTR,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ESTALE,
}
# exception class names (anywhere in the MRO) from libraries we do not import here: httpx, requests,
# urllib3, botocore, sqlalchemy, distributed
_TRANSIENT_CLASS_NAMES = {
    "TransportError",
    "TimeoutException",
    "ConnectTimeout",
    "ReadTimeout",
    "ProtocolError",
    "EndpointConnectionError",
    "CommClosedError",
}
_TRANSIENT_MESSAGES = ("database is locked", "temporarily unavailable", "connection reset")


def run_logger() -> Any:
    """Prefect's run logger inside a flow/task run (logs reach the UI), else the module logger."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return logger


class TransientError(RuntimeError):
    """Raise from a batch function for a failure worth retrying (busy GPU, flaky storage, ...)."""


def is_transient(error: BaseException) -> bool:
    """True for infrastructure failures worth a retry; False for bad data and bugs."""
    if isinstance(error, (TransientError, ConnectionError, TimeoutError, BlockingIOError, InterruptedError)):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    if any(cls.__name__ in _TRANSIENT_CLASS_NAMES for cls in type(error).__mro__):
        return True
    message = str(error).lower()
    return type(error).__name__ == "OperationalError" and any(m in message for m in _TRANSIENT_MESSAGES)


@dataclass(frozen=True)
class BatchReport:
    index: int
    outcomes: tuple[ItemOutcome, ...]
    seconds: float
    isolated: bool = False  # the batch raised and was re-run item by item


@dataclass
class RunSummary:
    """Result of :func:`run_batched`: per-item outcomes plus the rendered markdown report."""

    stage: str
    outcomes: list[ItemOutcome]
    n_batches: int
    batch_size: int
    task_runner: str
    seconds: float
    isolated_batches: int = 0
    markdown: str = ""
    artifact_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        tally = Counter(outcome.status for outcome in self.outcomes)
        return {status: tally.get(status, 0) for status in OUTCOME_STATUSES}

    @property
    def reasons(self) -> Counter[tuple[str, str]]:
        return Counter(
            (outcome.status, outcome.reason or "-")
            for outcome in self.outcomes
            if outcome.status in ("quarantined", "failed", "skipped")
        )

    @property
    def succeeded(self) -> bool:
        """No item failed (quarantined items are an expected, recorded outcome)."""
        return self.counts["failed"] == 0

    def keys(self, status: str) -> list[str]:
        return [outcome.key for outcome in self.outcomes if outcome.status == status]

    def payloads(self) -> list[Any]:
        """The stage results the batch functions attached, in completion order."""
        return [outcome.payload for outcome in self.outcomes if outcome.payload is not None]

    def one_line(self) -> str:
        counts = self.counts
        return (
            f"{self.stage}: {len(self.outcomes)} items, {counts['ok']} processed, {counts['skipped']} skipped, "
            f"{counts['quarantined']} quarantined, {counts['failed']} failed "
            f"({self.n_batches} batches, {self.seconds:.1f} s)"
        )


def chunked(items: Sequence[Item], batch_size: int) -> Iterator[list[Item]]:
    """Consecutive batches of at most ``batch_size`` items, order kept."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield list(items[start : start + batch_size])


def artifact_key_for(stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", stage.lower()).strip("-")
    return f"{key or 'stage'}-summary"


def _describe_type(error: BaseException, limit: int = 300) -> str:
    return f"{type(error).__name__} (details in the worker log)"


def _describe(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _normalise(
    raw: Sequence[ItemOutcome] | None, batch: Sequence[Any], item_key: Callable[[Any], str]
) -> list[ItemOutcome]:
    """Outcomes for every item of ``batch``: items the batch function did not mention count as ok."""
    given = list(raw or [])
    for outcome in given:
        if not isinstance(outcome, ItemOutcome):
            raise TypeError(f"batch function must return ItemOutcome objects, got {type(outcome).__name__}")
    mentioned = {outcome.key for outcome in given}
    expected = {item_key(item) for item in batch}
    unknown = sorted(mentioned - expected)
    if unknown:
        raise ValueError(
            f"batch function returned outcomes for keys not in its batch ({', '.join(unknown[:3])}); "
            "ItemOutcome.key must equal item_key(item)"
        )
    given.extend(ItemOutcome(item_key(item)) for item in batch if item_key(item) not in mentioned)
    return given


# Per-item progress of batches that run in this process (the threads task runner): the parent registers
# a tick per (run token, batch index); a batch function taking ``progress`` (``segment_batch``) calls it
# after each item, so the bar counts studies as they finish, not batches. Other runners (processes, dask)
# find nothing here: their bar counts a batch's items when the batch ends.
_ITEM_TICKS: dict[tuple[str, int], Callable[[], None]] = {}


def _accepts_progress(batch_fn: Callable[..., Any]) -> bool:
    import inspect

    try:
        return "progress" in inspect.signature(batch_fn).parameters
    except (TypeError, ValueError):
        return False


def process_batch(
    batch_fn: Callable[[list[Any]], Sequence[ItemOutcome] | None],
    batch: list[Any],
    index: int,
    item_key: Callable[[Any], str] = str,
    concurrency_limit: str | None = None,
    fatal_errors: tuple[type[BaseException], ...] = (),
    redact_errors: bool = False,
    progress_token: str | None = None,
) -> BatchReport:
    """Body of the Prefect batch task (also callable directly): run, isolate on non-transient errors.

    ``fatal_errors`` (stage-level problems such as missing model weights) are re-raised at once: they
    end the whole run instead of failing every item. ``redact_errors`` keeps only the exception type in
    the recorded reason (messages of some libraries quote file names, which may hold PHI).
    """
    describe = _describe_type if redact_errors else _describe
    started = time.perf_counter()
    guard: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if concurrency_limit:
        # a Prefect global concurrency limit (e.g. one slot per GPU: `prefect gcl create fvlm-gpu --limit 1`);
        # strict=False: without such a limit on the server this is a no-op
        from prefect.concurrency.sync import concurrency

        guard = concurrency(concurrency_limit, occupy=1, strict=False)
    with guard:
        try:
            tick = _ITEM_TICKS.get((progress_token, index)) if progress_token else None
            if tick is not None and _accepts_progress(batch_fn):
                done = batch_fn(batch, progress=lambda *_: tick())  # type: ignore[call-arg]
            else:
                done = batch_fn(batch)
            outcomes = _normalise(done, batch, item_key)
            isolated = False
        except Exception as error:
            if is_transient(error) or isinstance(error, fatal_errors):
                raise
            isolated = True
            if len(batch) <= 1:  # nothing to isolate
                outcomes = [ItemOutcome(item_key(item), "failed", describe(error)) for item in batch]
            else:
                outcomes = []
                for item in batch:
                    try:
                        outcomes.extend(_normalise(batch_fn([item]), [item], item_key))
                    except Exception as item_error:
                        if is_transient(item_error) or isinstance(item_error, fatal_errors):
                            raise
                        outcomes.append(ItemOutcome(item_key(item), "failed", describe(item_error)))
    return BatchReport(index=index, outcomes=tuple(outcomes), seconds=time.perf_counter() - started, isolated=isolated)


def _retry_only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed batch only when its exception is transient."""
    try:
        state.result()
    except Exception as error:  # the failure itself
        return is_transient(error)
    return False


def _batch_task(stage: str, retries: int, retry_delay_s: float, tags: Collection[str]) -> Any:
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.tasks import exponential_backoff

    return task(
        process_batch,
        name=f"{stage}-batch",
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s) if retry_delay_s > 0 else 0,
        retry_jitter_factor=0.5 if retry_delay_s > 0 else None,
        retry_condition_fn=_retry_only_transient,
        cache_policy=NO_CACHE,
        persist_result=False,
        tags=sorted({"fvlm", f"fvlm-{stage}", *tags}),
    )


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_batched(
    items: Sequence[Item],
    batch_fn: Callable[[list[Item]], Sequence[ItemOutcome] | None],
    batch_size: int,
    task_runner: str | Any = "threads",
    *,
    stage: str = "stage",
    max_workers: int = 2,
    retries: int = 2,
    retry_delay_s: float = 5.0,
    item_key: Callable[[Item], str] = str,
    skip_keys: Collection[str] = (),
    skip_reason: str = "already processed",
    concurrency_limit: str | None = None,
    tags: Collection[str] = (),
    dask_address: str | None = None,
    artifact: bool = True,
    qc_link_limit: int = 50,
    fatal_errors: tuple[type[BaseException], ...] = (),
    redact_errors: bool = False,
    item_unit: str = "items",
) -> RunSummary:
    """Fan ``items`` out in batches of ``batch_size`` over a Prefect task runner; return a summary.

    ``task_runner`` is a name (threads | processes | dask, see :mod:`flows.runners`) or a Prefect task
    runner instance. Items whose ``item_key`` is in ``skip_keys`` are recorded as skipped without any
    task run (incremental re-runs cost no stage work). Call it inside a ``@flow`` so that the batch task
    runs, the artifacts and the logs belong to that flow run.
    """
    from flows.runners import make_task_runner

    started = time.perf_counter()
    log = run_logger()
    skip = set(skip_keys)
    pending: list[Item] = []
    outcomes: list[ItemOutcome] = []
    for item in items:
        key = item_key(item)
        if key in skip:
            outcomes.append(ItemOutcome(key, "skipped", skip_reason))
        else:
            pending.append(item)
    batches = list(chunked(pending, batch_size))
    runner_name = task_runner if isinstance(task_runner, str) else type(task_runner).__name__
    isolated = 0
    progress_id = None
    if batches:
        runner = (
            make_task_runner(task_runner, max_workers, dask_address=dask_address)
            if isinstance(task_runner, str)
            else task_runner
        )
        batch_task = _batch_task(stage, retries, retry_delay_s, tags)
        if artifact and _in_prefect_run():
            progress_id = _safe_progress(None, 0.0, stage)
        from prefect.futures import as_completed

        from core.progress import progress

        # per-batch lines go to the Prefect UI only (fvlm_console False); the terminal gets the bar /
        # periodic progress lines of the items the finished batches hold, counted here in the parent
        ui_only = {"fvlm_console": False}
        log.info(
            "%s: %d items to process in %d batches (%s)",
            stage,
            len(pending),
            len(batches),
            runner_name,
            extra=ui_only,
        )
        bar = progress(len(pending), stage, item_unit, log=log, closing_line=False)
        token = f"{stage}-{id(bar)}"
        ticked = [0] * len(batches)

        def tick_for(index: int, size: int) -> Callable[[], None]:
            def tick() -> None:
                if ticked[index] < size:  # a retried batch does not count its items twice
                    ticked[index] += 1
                    bar.advance(1)

            return tick

        if runner_name == "threads":
            _ITEM_TICKS.update({(token, index): tick_for(index, len(batch)) for index, batch in enumerate(batches)})
        with runner, bar, _forget_ticks(token):
            futures = {}
            for index, batch in enumerate(batches):
                future = runner.submit(
                    batch_task,
                    parameters={
                        "batch_fn": batch_fn,
                        "batch": batch,
                        "index": index,
                        "item_key": item_key,
                        "concurrency_limit": concurrency_limit,
                        "fatal_errors": tuple(fatal_errors),
                        "redact_errors": redact_errors,
                        "progress_token": token if runner_name == "threads" else None,
                    },
                )
                futures[future] = (index, batch)
            done = items_done = 0
            for future in as_completed(list(futures)):
                index, batch = futures[future]
                try:
                    report: BatchReport = future.result(raise_on_failure=True)
                    outcomes.extend(report.outcomes)
                    isolated += int(report.isolated)
                except Exception as error:  # retries exhausted (transient) or the task itself crashed
                    if isinstance(error, tuple(fatal_errors)):
                        raise
                    detail = _describe_type(error) if redact_errors else _describe(error, 200)
                    reason = f"batch failed after {retries} retries: {detail}"
                    outcomes.extend(ItemOutcome(item_key(item), "failed", reason) for item in batch)
                done += 1
                items_done += len(batch)
                rest, ticked[index] = len(batch) - ticked[index], len(batch)
                bar.advance(rest)  # what per-item ticks did not count (other runners, isolation, failures)
                log.info(
                    "%s: batch %d/%d done (%d/%d items, %.1f s)",
                    stage,
                    done,
                    len(batches),
                    items_done,
                    len(pending),
                    time.perf_counter() - started,
                    extra=ui_only,
                )
                if progress_id is not None:
                    _safe_progress(progress_id, 100.0 * done / len(batches), stage)
    summary = RunSummary(
        stage=stage,
        outcomes=outcomes,
        n_batches=len(batches),
        batch_size=batch_size,
        task_runner=runner_name,
        seconds=time.perf_counter() - started,
        isolated_batches=isolated,
        artifact_key=artifact_key_for(stage),
    )
    summary.markdown = render_markdown(summary, max_workers=max_workers, qc_link_limit=qc_link_limit)
    log.info(summary.one_line())
    if artifact and _in_prefect_run():
        _safe_markdown(summary)
    return summary


@contextlib.contextmanager
def _forget_ticks(token: str) -> Iterator[None]:
    try:
        yield
    finally:
        for key in [key for key in _ITEM_TICKS if key[0] == token]:
            _ITEM_TICKS.pop(key, None)


def render_markdown(summary: RunSummary, *, max_workers: int | None = None, qc_link_limit: int = 50) -> str:
    counts = summary.counts
    total = len(summary.outcomes)
    processed = total - counts["skipped"]
    per_item = f", {summary.seconds / processed:.2f} s per processed item" if processed else ""
    lines = [
        f"# {summary.stage}: {total} items",
        "",
        "| status | count |",
        "|---|---:|",
        *(f"| {status} | {counts[status]} |" for status in OUTCOME_STATUSES),
        "",
        f"Wall time {summary.seconds:.1f} s{per_item}; {summary.n_batches} batches of <= {summary.batch_size} "
        f"on `{summary.task_runner}`" + (f" ({max_workers} workers)" if max_workers else "") + ".",
    ]
    if summary.isolated_batches:
        lines.append(f"{summary.isolated_batches} batch(es) raised and were re-run item by item.")
    reasons = summary.reasons
    if reasons:
        lines += ["", "## Reasons", "", "| status | reason | count |", "|---|---|---:|"]
        for (status, reason), count in reasons.most_common(30):
            lines.append(f"| {status} | {reason.replace('|', '/')} | {count} |")
    problems = [o for o in summary.outcomes if o.status in ("quarantined", "failed")]
    if problems:
        lines += ["", "## Quarantined / failed items", ""]
        lines += [f"- `{o.key}` {o.status}: {o.reason}" for o in problems[:50]]
        if len(problems) > 50:
            lines.append(f"- ... and {len(problems) - 50} more")
    with_qc = [o for o in summary.outcomes if o.qc_path]
    if with_qc:
        # paths as text: a file:// link from Prefect's http page does not open in a browser; with an MLflow
        # server the segment flow links the pictures by http URL (flows.stages.publish_qc_pictures)
        lines += ["", "## QC pictures", ""]
        for outcome in with_qc[:qc_link_limit]:
            lines.append(f"- {outcome.key}: `{Path(outcome.qc_path).resolve() if outcome.qc_path else ''}`")
        if len(with_qc) > qc_link_limit:
            lines.append(f"- ... and {len(with_qc) - qc_link_limit} more")
    for name, value in summary.extra.items():
        lines.append(f"- {name}: {value}")
    return "\n".join(lines) + "\n"


def _safe_progress(artifact_id: Any, progress: float, stage: str) -> Any:
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        if artifact_id is None:
            return create_progress_artifact(progress, description=f"{stage}: batches done (%)")
        update_progress_artifact(artifact_id, progress)
        return artifact_id
    except Exception as error:  # reporting must never fail the stage
        logger.warning("%s: progress artifact not written: %s", stage, error)
        return None


def _safe_markdown(summary: RunSummary) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(summary.markdown, key=summary.artifact_key, description=summary.one_line())
    except Exception as error:
        logger.warning("%s: markdown artifact not written: %s", summary.stage, error)


# ------------------------------------------------------------------------------ the stage flows' seam
@dataclass(frozen=True)
class FanOut:
    """How a stage flow fans out: the ``orchestration`` section of params.yaml (+ a stage's batch size)."""

    batch_size: int
    task_runner: str
    max_workers: int
    retries: int
    retry_delay_s: float
    dask_address: str | None
    gpu_concurrency_limit: str | None

    @classmethod
    def from_config(cls, orchestration: OrchestrationConfig | None = None, **overrides: Any) -> FanOut:
        """The fan-out of ``orchestration`` (default: the built-in config); ``None`` overrides are ignored."""
        from core.config import OrchestrationConfig

        section = orchestration if orchestration is not None else OrchestrationConfig()
        values = {name: getattr(section, name) for name in cls.__dataclass_fields__}
        unknown = set(overrides) - set(values)
        if unknown:
            raise TypeError(f"unknown fan-out setting(s) {sorted(unknown)}")
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)


def prefect_batches(
    fan_out: FanOut,
    *,
    stage: str,
    gpu: bool = False,
    fatal_errors: tuple[type[BaseException], ...] = (),
    redact_errors: bool = False,
    item_unit: str = "studies",
) -> MapBatches:
    """A stage library's ``map_batches`` seam that runs the batches as Prefect tasks (:func:`run_batched`):
    retries, isolation of crashing items, markdown + progress artifacts; ``gpu``: each batch holds the
    ``gpu_concurrency_limit`` slot and is tagged ``gpu``."""

    def map_batches(items: Sequence[Any], batch_fn: BatchFn, key_fn: KeyFn) -> list[ItemOutcome]:
        summary = run_batched(
            items,
            batch_fn,
            fan_out.batch_size,
            fan_out.task_runner,
            stage=stage,
            max_workers=fan_out.max_workers,
            retries=fan_out.retries,
            retry_delay_s=fan_out.retry_delay_s,
            item_key=key_fn,
            dask_address=fan_out.dask_address,
            concurrency_limit=fan_out.gpu_concurrency_limit if gpu else None,
            tags=["gpu"] if gpu else (),
            fatal_errors=fatal_errors,
            redact_errors=redact_errors,
            item_unit=item_unit,
        )
        return summary.outcomes

    return map_batches
