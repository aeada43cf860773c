"""Run external commands (dvc, torchrun) from flows: streamed into the run log, environment passed on.

Children get the parent's Prefect API URL (so flows started by the ``fvlm`` commands that DVC runs report
to the same Prefect server as the flow that started DVC), the MLflow tracking URI, telemetry off, and the
interpreter's ``bin`` folder first on ``PATH`` (DVC runs ``fvlm`` from there). On Linux each command runs
in its own process group under a small supervisor that terminates the whole group when the process that
started it dies, so ``kill -9`` of a pipeline run leaves neither an orphaned ``dvc repro`` holding the
repository lock nor a stage command still writing outputs.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.env import OFFLINE_DEFAULTS
from core.processes import die_with_parent

# the time an `fvlm` child put before its line (fvlm/console.py's "12:03:04 message"): the log this line goes
# to stamps it again, so it is dropped -- one timestamp per line
CHILD_STAMP = re.compile(r"^\d{2}:\d{2}:\d{2} ")


def without_child_stamp(line: str) -> str:
    """``"12:03:04 convert: 3 studies"`` -> ``"convert: 3 studies"``; other lines unchanged."""
    return CHILD_STAMP.sub("", line, count=1)


class CommandError(RuntimeError):
    """An external command that exited non-zero; carries the tail of its output."""

    def __init__(self, command: Sequence[str], returncode: int, tail: str) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.tail = tail
        super().__init__(f"`{' '.join(command)}` exited with code {returncode}:\n{tail}")


@dataclass(frozen=True)
class CommandResult:
    command: list[str]
    returncode: int
    tail: str


def executable(name: str) -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH, else ``name``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or name


def current_prefect_api_url() -> str | None:
    """The API URL this process talks to: $PREFECT_API_URL / the setting, or, inside a flow or task run,
    the URL of the client that run uses (the temporary server's when none is configured). Never starts
    a server itself."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "prefect" not in sys.modules:  # not using Prefect in this process: nothing to pass on
        return None
    try:
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.settings import PREFECT_API_URL

        configured = PREFECT_API_URL.value()
        if configured:
            return str(configured)
        context = FlowRunContext.get() or TaskRunContext.get()
        client = getattr(context, "client", None) if context is not None else None
        url = str(getattr(client, "api_url", "") or "")
        return url if url.startswith("http") else None
    except Exception:
        return None


def child_env(extra: Mapping[str, str] | None = None, *, tracking_uri: str | None = None) -> dict[str, str]:
    env = {**OFFLINE_DEFAULTS, **os.environ}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    api_url = current_prefect_api_url()
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.update(extra or {})
    return env


# Runs the real command in its own session and takes the whole process group down with it: when the
# flow process dies (even by SIGKILL) the kernel sends this supervisor SIGTERM (PR_SET_PDEATHSIG), and
# it signals its group -- dvc, the `fvlm` stage command dvc started, and that command's worker
# processes -- so no orphan keeps writing outputs while a rerun starts.
_SUPERVISOR = r"""
import os, signal, subprocess, sys
os.setsid()
def _stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(0, signal.SIGTERM)
signal.signal(signal.SIGTERM, _stop)
signal.signal(signal.SIGINT, _stop)
if os.getppid() == 1:  # the flow died before the death signal was armed
    sys.exit(143)
child = subprocess.Popen(sys.argv[1:])
while True:
    try:
        sys.exit(child.wait())
    except InterruptedError:
        continue
"""


def run_command(
    command: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    log: Any = None,
    tail_lines: int = 60,
    check: bool = True,
    supervise: bool = True,
) -> CommandResult:
    """Run ``command``, streaming each output line to ``log.info``; raise CommandError when it fails.

    With ``supervise`` (Linux) the command and everything it starts form one process group that is
    terminated when this process dies or is interrupted.
    """
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    linux = sys.platform.startswith("linux")
    argv = [sys.executable, "-c", _SUPERVISOR, *command] if linux and supervise else list(command)
    process = subprocess.Popen(  # noqa: S603 - argv list, no shell
        argv,
        cwd=str(cwd),
        env=dict(env) if env is not None else child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        preexec_fn=die_with_parent if linux else None,  # noqa: PLW1509
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if log is not None and line.strip():
                log.info("%s", without_child_stamp(line))
        returncode = process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    result = CommandResult(list(command), returncode, "\n".join(tail))
    if check and returncode != 0:
        raise CommandError(command, returncode, result.tail)
    return result
