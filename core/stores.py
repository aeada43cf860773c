"""Where ``fvlm services up`` leaves its servers, and whether one is up: PID files and health checks.

``<services.data_dir>/run/<name>.pid`` holds JSON (pid, command, url, health_url, port, client_env, marker,
started). One home for reading it, so that the config (which stores a command talks to, :mod:`core.config`)
and the service manager (:mod:`flows.services`, which writes these files) agree on what "running" means,
and on *where*: the record's URLs are the ports ``fvlm services up`` chose, whatever params.yaml says.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

RUN_DIR = "run"  # under services.data_dir


def pid_file(data_dir: Path, name: str) -> Path:
    return data_dir / RUN_DIR / f"{name}.pid"


def read_pid(data_dir: Path, name: str) -> dict[str, object] | None:
    """The PID record of service ``name``; None when absent or unreadable."""
    path = pid_file(data_dir, name)
    try:
        record = json.loads(path.read_text())
        int(record["pid"])
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this very process counts as gone
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_ours(record: dict[str, object]) -> bool:
    """The recorded PID still runs the recorded program (not a reused PID)."""
    pid = int(record["pid"])  # type: ignore[call-overload]
    if not pid_alive(pid):
        return False
    command_line = cmdline(pid)
    if not command_line:  # no /proc (macOS): trust the PID file
        return True
    expected = [str(part) for part in record.get("command", [])][:3]  # type: ignore[attr-defined]
    marker = str(record.get("marker", ""))
    return all(Path(part).name in command_line for part in expected[1:]) or marker in command_line


def healthy(url: str | None, timeout_s: float = 2.0) -> bool:
    """``url`` answers 2xx (None: no HTTP endpoint, alive counts as healthy)."""
    if url is None:
        return True
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - local URL
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def running_record(data_dir: Path, name: str, timeout_s: float = 0.5) -> dict[str, object] | None:
    """The PID record of service ``name`` when its process is ours and answers the health URL it recorded.

    Records written before they held ``health_url`` (older versions) are not trusted here: None.
    """
    record = read_pid(data_dir, name)
    if record is None or not record.get("health_url") or not is_ours(record):
        return None
    return record if healthy(str(record["health_url"]), timeout_s) else None


def running_client_env(data_dir: Path, names: tuple[str, ...] = ("prefect", "mlflow")) -> dict[str, str]:
    """What a client exports to use the services that run (and answer) now, from their PID records only:
    a service that is not running contributes nothing (never a guessed default port)."""
    env: dict[str, str] = {}
    for name in names:
        record = running_record(data_dir, name)
        client = record.get("client_env") if record is not None else None
        if isinstance(client, dict):
            env.update({str(key): str(value) for key, value in client.items()})
    return env


def service_healthy(data_dir: Path, name: str, url: str, timeout_s: float = 0.5) -> bool:
    """The service ``fvlm services up`` started (PID file, live process) answers its health URL."""
    record = read_pid(data_dir, name)
    if record is None or record.get("health_url") not in (None, url):  # it recorded another port: not this one
        return False
    return pid_alive(int(record["pid"])) and healthy(url, timeout_s)  # type: ignore[call-overload]
