"""Progress of a stage's long work: a rich bar on a terminal, plain periodic log lines elsewhere.

::

    with progress(studies, "convert", "studies") as bar:   # iterate ...
        for study in bar:
            ...
    with progress(total_steps, "train", "steps") as bar:   # ... or count
        bar.advance(loss=0.4123)

Where it draws (:func:`progress_mode`): ``bar`` (a rich progress bar on stderr), ``plain`` (an INFO log
line at most every ``every_s`` seconds and/or every ``every_items`` items, with count / total, rate and
ETA, plus one closing line: CI logs, Prefect workers, pipes), ``off`` (``fvlm -q``: nothing). ``auto``
(the default) is ``bar`` when stderr is a terminal, else ``plain``. The CLI sets the mode with
:func:`configure_progress`; ``$FVLM_PROGRESS`` (auto | bar | plain | off) overrides it.

Cheap to import (stdlib only); rich is imported when the first bar is drawn, and a missing rich falls
back to plain lines. Bars opened while another is drawn (a stage inside a flow) share one display.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
Mode = Literal["auto", "bar", "plain", "off"]
MODES: tuple[str, ...] = ("auto", "bar", "plain", "off")
ENV_VAR = "FVLM_PROGRESS"
DEFAULT_EVERY_S = 15.0

logger = logging.getLogger("fvlm.progress")
_configured: Mode = "auto"


def configure_progress(mode: Mode) -> None:
    """Set the process-wide mode (``$FVLM_PROGRESS`` still wins)."""
    global _configured
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
    _configured = mode


def progress_mode() -> Literal["bar", "plain", "off"]:
    """The mode a new :class:`Progress` uses now."""
    chosen = os.environ.get(ENV_VAR, "").strip().lower() or _configured
    if chosen not in MODES:
        chosen = _configured
    if chosen == "auto":
        stream = sys.stderr
        return "bar" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "plain"
    return chosen  # type: ignore[return-value]


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:03``, ``1:02:03``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _format_fields(fields: dict[str, Any]) -> str:
    parts = []
    for name, value in fields.items():
        if isinstance(value, float):
            parts.append(f"{name} {value:.4g}")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


class Progress(Generic[T]):
    """One unit of long work being counted; use :func:`progress` to make one."""

    def __init__(
        self,
        items: Iterable[T] | None,
        total: int | None,
        description: str,
        unit: str = "items",
        *,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        every_s: float | None = DEFAULT_EVERY_S,
        every_items: int | None = None,
        mode: Literal["bar", "plain", "off"] | None = None,
        start: int = 0,
        closing_line: bool = True,
    ) -> None:
        self.items = items
        self.closing_line = closing_line
        self.total = total
        self.description = description
        self.unit = unit
        self.log = log if log is not None else logger
        self.every_s = every_s
        self.every_items = every_items
        self.mode = mode or progress_mode()
        self.count = start
        self.start_count = start
        self.fields: dict[str, Any] = {}
        self.started = time.perf_counter()
        self._last_line_at = self.started
        self._last_line_count = start
        self._task: Any = None
        self._closed = False
        self._lock = threading.Lock()
        if self.mode == "bar":
            self._task = _BARS.add(self)
            if self._task is None:  # rich missing: plain lines instead
                self.mode = "plain"

    # ----------------------------------------------------------------- counting
    def advance(self, n: int = 1, **fields: Any) -> None:
        """``n`` more items done; ``fields`` (e.g. ``loss=0.41``) are shown after the counts."""
        with self._lock:
            self.count += n
            self.fields.update(fields)
            self._refresh()

    def update(self, completed: int | None = None, *, total: int | None = None, **fields: Any) -> None:
        """Set the count (and/or the total) directly."""
        with self._lock:
            if completed is not None:
                self.count = completed
            if total is not None:
                self.total = total
            self.fields.update(fields)
            self._refresh()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        """Items per second since the start (items counted in this run only)."""
        elapsed = self.elapsed
        done = self.count - self.start_count
        return done / elapsed if elapsed > 0 and done > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.count, 0) / self.rate

    def line(self) -> str:
        """The plain progress line: ``convert: 10/20 studies (50%), 3.2 studies/s, ETA 0:03``."""
        counts = f"{self.count}/{self.total}" if self.total is not None else f"{self.count}"
        parts = [f"{self.description}: {counts} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.count / self.total:.0f}%)"
        parts.append(f"{self.rate:.3g} {self.unit}/s" if self.rate > 0 else f"0 {self.unit}/s")
        parts.append(f"elapsed {format_duration(self.elapsed)}")
        eta = self.eta
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA ?")
        if self.fields:
            parts.append(_format_fields(self.fields))
        return ", ".join(parts)

    def final_line(self) -> str:
        counts = f"{self.count}/{self.total}" if self.total is not None else f"{self.count}"
        text = f"{self.description}: {counts} {self.unit} in {format_duration(self.elapsed)}"
        if self.rate > 0:
            text += f" ({self.rate:.3g} {self.unit}/s)"
        if self.fields:
            text += f", {_format_fields(self.fields)}"
        return text

    def _due(self, now: float) -> bool:
        if self.every_items and self.count - self._last_line_count >= self.every_items:
            return True
        return self.every_s is not None and now - self._last_line_at >= self.every_s

    def _refresh(self) -> None:
        if self._closed:
            return
        if self.mode == "bar":
            _BARS.update(self)
        elif self.mode == "plain":
            now = time.perf_counter()
            finished = self.total is not None and self.count >= self.total
            if not finished and self._due(now):
                self._last_line_at, self._last_line_count = now, self.count
                self.log.info(self.line())

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """End: remove the bar from the live display (it stays printed) / log the closing line."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.mode == "bar":
            _BARS.remove(self)
        elif self.mode == "plain" and self.closing_line and self.count > self.start_count:
            self.log.info(self.final_line())

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        if self.items is None:
            raise TypeError("this progress counts a total; call advance() instead of iterating it")
        try:
            for item in self.items:
                yield item
                self.advance()
        finally:
            self.close()


def progress(
    items_or_total: Iterable[T] | int | None,
    description: str,
    unit: str = "items",
    *,
    total: int | None = None,
    log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    every_s: float | None = DEFAULT_EVERY_S,
    every_items: int | None = None,
    start: int = 0,
    closing_line: bool = True,
    enabled: bool = True,
) -> Progress[T]:
    """A :class:`Progress` over an iterable (iterate it) or a total count (call ``advance``).

    ``log``: where plain lines go (default logger ``fvlm.progress``; a flow passes its run logger so
    the lines reach the Prefect UI). ``start``: items already done before (resumed training).
    ``closing_line=False``: no "done" line in plain mode (the caller logs its own summary).
    ``enabled=False``: counts only, shows nothing (a caller that shows progress elsewhere).
    """
    options: dict[str, Any] = {
        "log": log,
        "every_s": every_s,
        "every_items": every_items,
        "start": start,
        "closing_line": closing_line,
        "mode": None if enabled else "off",
    }
    if items_or_total is None or isinstance(items_or_total, int):
        return Progress(None, items_or_total if total is None else total, description, unit, **options)
    items = items_or_total
    if total is None and hasattr(items, "__len__"):
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:  # e.g. a DataLoader over an IterableDataset
            total = None
    return Progress(items, total, description, unit, **options)


def progress_of_keys(
    items: Iterable[T],
    description: str,
    unit: str,
    keys: Callable[[T], Iterable[Hashable]],
    *,
    total: int | None = None,
    log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    every_s: float | None = DEFAULT_EVERY_S,
    every_items: int | None = None,
) -> Iterator[T]:
    """Iterate ``items`` (e.g. batches of crops) counting the distinct ``keys`` each one carries (the
    studies in it), out of ``total`` studies: ``evaluate: val: 12/40 studies``, not ``3/? batches``.

    A key counts once its first item has been handled (the consumer is done with the item when it asks for
    the next one); at the end the count is exact. ``total`` None: the count of distinct keys when
    ``items`` is a sequence (read once up front), else unknown.
    """
    if total is None and isinstance(items, Sequence):
        total = len({key for item in items for key in keys(item)})
    seen: set[Hashable] = set()
    bar: Progress[Any] = progress(total, description, unit, log=log, every_s=every_s, every_items=every_items)
    with bar:
        for item in items:
            yield item
            new = [key for key in dict.fromkeys(keys(item)) if key not in seen]  # each key once
            seen.update(new)
            if new:
                bar.advance(len(new))


class _SharedBars:
    """One rich live display for every bar of the process (nested / concurrent progresses share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._display: Any = None
        self._users = 0

    def add(self, owner: Progress[Any]) -> Any:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress
        except ImportError:  # pragma: no cover - rich is a dependency; plain lines without it
            return None
        with self._lock:
            if self._display is None:
                self._display = RichProgress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"),
                    TaskProgressColumn(),
                    TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(),
                    TextColumn("ETA"),
                    TimeRemainingColumn(),
                    TextColumn("{task.fields[extra]}"),
                    console=Console(stderr=True),
                    redirect_stdout=True,
                    redirect_stderr=True,
                )
                self._display.start()
            self._users += 1
            return self._display.add_task(
                owner.description, total=owner.total, completed=owner.count, unit=owner.unit, rate="", extra=""
            )

    def update(self, owner: Progress[Any]) -> None:
        display = self._display
        if display is None or owner._task is None:
            return
        rate = owner.rate
        display.update(
            owner._task,
            completed=owner.count,
            total=owner.total,
            rate=f"{rate:.3g} {owner.unit}/s" if rate > 0 else "",
            extra=_format_fields(owner.fields),
        )

    def remove(self, owner: Progress[Any]) -> None:
        with self._lock:
            display = self._display
            if display is None:
                return
            self.update(owner)
            self._users -= 1
            if self._users <= 0:
                display.stop()
                self._display = None
                self._users = 0


_BARS = _SharedBars()
