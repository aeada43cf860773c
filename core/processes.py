"""Child processes that do not outlive their parent."""

from __future__ import annotations

import os
import signal
import sys
import time


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (``PR_SET_PDEATHSIG``); elsewhere a no-op.

    Used as the initializer of the stages' process pools and between fork and exec of supervised
    commands: a ``kill -9`` of a stage command then takes its workers with it instead of leaving them
    idle (holding the command's output pipe open) forever.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux / no glibc: nothing to do
        pass


def stop_multiprocessing_helpers() -> None:
    """Stop (and reap) multiprocessing's resource tracker and forkserver if this process started them.

    A spawn / forkserver pool starts these helpers once and leaves them running until the interpreter
    is gone; they then exit on their own *after* the command, and a poor init leaves them as zombies in
    the command's process group. Stopping them here makes the command wait for them: nothing of it
    outlives it. Safe to call more than once; multiprocessing restarts them on next use.
    """
    for module_name, attribute, pid_attribute in (
        ("multiprocessing.forkserver", "_forkserver", "_forkserver_pid"),
        ("multiprocessing.resource_tracker", "_resource_tracker", "_pid"),
    ):
        module = sys.modules.get(module_name)
        helper = getattr(module, attribute, None) if module is not None else None
        stop = getattr(helper, "_stop", None)
        # only the process that launched the helper knows its pid (a pool worker merely shares its pipe)
        if stop is None or getattr(helper, pid_attribute, None) is None:
            continue
        try:
            stop()
        except (OSError, ChildProcessError, RuntimeError, TypeError):  # already gone / reaped elsewhere
            pass


_IMPORTED_BY = os.getpid()


def _stop_helpers_at_exit() -> None:
    if os.getpid() == _IMPORTED_BY:  # not in a forked child, which inherited this hook and the helpers' pids
        stop_multiprocessing_helpers()


def _register_exit_hook() -> None:
    import atexit

    atexit.register(_stop_helpers_at_exit)


_register_exit_hook()  # every module that starts a pool imports this one (die_with_parent)


# ----------------------------------------------------------------------------- waits that scale with load
MAX_LOAD_FACTOR = 10.0  # a wait grows at most tenfold: a machine this busy is broken, not slow


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_factor() -> float:
    """``max(1, 1-minute load average / usable CPUs)``, at most :data:`MAX_LOAD_FACTOR`: how much slower than
    an idle machine a start-up may be now (1.0 where there is no load average)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 1.0
    return min(MAX_LOAD_FACTOR, max(1.0, load / cpu_count()))


def scaled_timeout(base_s: float) -> float:
    """``base_s`` on an idle machine, ``base_s x load_factor()`` on a busy one."""
    return base_s * load_factor()


class LoadScaledDeadline:
    """A start-up deadline that moves out while the machine gets busier (the load is read at every check,
    the largest factor seen is kept): ``while not ready: if deadline.passed(): fail``."""

    def __init__(self, base_s: float) -> None:
        self.base_s = base_s
        self.started = time.monotonic()
        self.factor = load_factor()

    def passed(self) -> bool:
        self.factor = max(self.factor, load_factor())
        return time.monotonic() - self.started > self.base_s * self.factor

    @property
    def limit_s(self) -> float:
        return self.base_s * self.factor

    def describe(self) -> str:
        """``"300 s (120 s x load 2.5: load average 5.0 on 2 CPUs)"`` for error messages."""
        if self.factor <= 1.0:
            return f"{self.limit_s:.0f} s"
        return f"{self.limit_s:.0f} s ({self.base_s:.0f} s x load {self.factor:.1f} on {cpu_count()} CPUs)"


EPHEMERAL_STARTUP_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
EPHEMERAL_STARTUP_BASE_S = 120  # core.env.OFFLINE_DEFAULTS' value


def scale_ephemeral_startup_timeout(environ: dict[str, str] | None = None) -> None:
    """Let Prefect's own ephemeral server (a flow run without ``PREFECT_API_URL``) wait as long as the load
    asks for. Prefect reads it when it is imported: call before. A value the user chose is kept."""
    target = os.environ if environ is None else environ
    current = target.get(EPHEMERAL_STARTUP_VARIABLE)
    if current not in (None, "", str(EPHEMERAL_STARTUP_BASE_S)):
        return
    target[EPHEMERAL_STARTUP_VARIABLE] = str(int(scaled_timeout(EPHEMERAL_STARTUP_BASE_S)))
