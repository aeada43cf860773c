"""fvlm services up / status / down on free ports: real Prefect + MLflow servers, health, PID files."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows import services
from fvlm.cli import main


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_stale_pid_file_is_not_signalled(free_port: Callable[..., Any], tmp_path: Path) -> None:
    specs = services.service_specs(tmp_path, prefect_port=free_port(), mlflow_port=free_port())
    (tmp_path / "run").mkdir()
    # PID 1 exists but is not our server: stop must only drop the file
    (tmp_path / "run" / "prefect.pid").write_text(
        json.dumps({"pid": 1, "command": ["x", "prefect-never"], "marker": "never-matches"})
    )
    states = services.stop(tmp_path, specs, ["prefect"])
    assert states[0].detail == "stale pid file removed"
    assert not (tmp_path / "run" / "prefect.pid").exists()


def test_port_in_use_is_a_clear_error(free_port: Callable[..., Any], tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        specs = services.service_specs(tmp_path, prefect_port=port, mlflow_port=free_port())
        with pytest.raises(services.ServiceError, match=f"port {port} is already in use"):
            services.start(tmp_path, specs, ["prefect"], timeout_s=5)


@pytest.mark.slow  # two real servers: ~10 s idle machine, 30+ s under load
def test_services_up_status_down(
    free_port: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FVLM_SERVICES_DIE_WITH_PARENT", "1")  # no leftover servers if pytest is killed
    data_dir = tmp_path / "svc"
    ports = ["--prefect-port", str(free_port()), "--mlflow-port", str(free_port())]
    common = ["--data-dir", str(data_dir), *ports]
    try:
        assert main(["services", "up", *common, "--timeout", "150"]) == 0
        out = capsys.readouterr().out
        assert "prefect  healthy" in out and "mlflow   healthy" in out
        env = dict(
            line.removeprefix("export ").split("=", 1) for line in (data_dir / "services.env").read_text().splitlines()
        )
        with urllib.request.urlopen(env["PREFECT_API_URL"] + "/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + "/health", timeout=5) as response:
            assert response.status == 200
        assert env["PREFECT_API_URL"].startswith("http://127.0.0.1:")
        pids = {
            name: json.loads((data_dir / "run" / f"{name}.pid").read_text())["pid"] for name in ("prefect", "mlflow")
        }
        assert main(["services", "status", *common]) == 0
        # a second `up` leaves the running servers alone
        assert main(["services", "up", *common]) == 0
        assert pids == {name: json.loads((data_dir / "run" / f"{name}.pid").read_text())["pid"] for name in pids}
        assert (data_dir / "prefect" / "prefect.db").exists() and (data_dir / "mlflow" / "mlflow.db").exists()
    finally:
        assert main(["services", "down", *common]) == 0
    assert not any((data_dir / "run").glob("*.pid"))
    assert not any(_alive(pid) for pid in pids.values())
    assert main(["services", "status", *common]) == 3
