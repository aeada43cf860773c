"""run_command: output streamed, failures carry the tail, and kill -9 of the caller leaves no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.subprocesses import CommandError, child_env, run_command


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, fmt: str, line: str) -> None:
        self.lines.append(line)


def test_output_is_streamed_and_failure_has_the_tail(tmp_path: Path) -> None:
    log = _Lines()
    result = run_command([sys.executable, "-c", "print('one'); print('two')"], cwd=tmp_path, log=log)
    assert result.returncode == 0 and log.lines == ["one", "two"]
    with pytest.raises(CommandError) as info:
        run_command([sys.executable, "-c", "import sys; print('boom'); sys.exit(4)"], cwd=tmp_path)
    assert info.value.returncode == 4 and "boom" in info.value.tail


def test_child_env_puts_this_venv_first_and_turns_telemetry_off() -> None:
    env = child_env({"X": "1"}, tracking_uri="sqlite:////tmp/m.db")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/m.db" and env["X"] == "1"
    assert env["DVC_NO_ANALYTICS"] == "1"


_GRANDCHILD = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
_MIDDLE = (  # a stage command that starts a worker of its own (like dvc -> fvlm convert -> pool)
    "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]])"
)
_CALLER = """
import sys
from flows.subprocesses import run_command
run_command([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]], cwd=".")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_kill_9_of_the_caller_takes_the_whole_command_tree_down(tmp_path: Path, repo_root: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    caller = subprocess.Popen([sys.executable, "-c", _CALLER, _MIDDLE, _GRANDCHILD, str(pid_file)], cwd=repo_root)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and caller.poll() is None
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        stat = Path(f"/proc/{grandchild}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the grandchild outlived the killed caller")
