"""Child processes that do not outlive their parent."""

from __future__ import annotations

import signal


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
