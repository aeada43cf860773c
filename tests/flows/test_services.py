"""fvlm services up / status / down on free ports: real Prefect + MLflow servers, health, PID files."""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
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


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    """A port on 127.0.0.1 that answers every GET with 200 (a stand-in for a service's health URL)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _record(data_dir: Path, name: str, port: int) -> None:
    """A PID record as `services up` writes it, for this very process (alive, ours) on ``port``."""
    spec = services.service_specs(data_dir, prefect_port=port, mlflow_port=port)[name]
    (data_dir / "run").mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "command": [], "marker": "", "url": spec.url, "health_url": spec.health_url}
    (data_dir / "run" / f"{name}.pid").write_text(json.dumps({**record, "port": port, "client_env": spec.client_env}))


def test_prefect_server_and_its_ui_are_told_the_chosen_port(tmp_path: Path) -> None:
    env = services.service_specs(tmp_path, prefect_port=4271, mlflow_port=5071)["prefect"].env
    assert env["PREFECT_UI_API_URL"] == env["PREFECT_API_URL"] == "http://127.0.0.1:4271/api"
    assert env["PREFECT_SERVER_API_PORT"] == "4271"


def test_commands_find_services_on_the_ports_up_chose(tmp_path: Path, health_server: int) -> None:
    from core.config import config_from_dict, services_environment

    data_dir = tmp_path / ".fvlm-services"
    _record(data_dir, "prefect", health_server)
    _record(data_dir, "mlflow", health_server)
    config = config_from_dict({}, root=tmp_path, environ={})  # params.yaml still says 4200 / 5000
    assert services_environment(config, environ={}) == {
        "PREFECT_API_URL": f"http://127.0.0.1:{health_server}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{health_server}",
    }
    assert services.recorded_port(data_dir, "prefect") == health_server


def test_only_prefect_never_names_an_mlflow_it_did_not_start(tmp_path: Path, health_server: int) -> None:
    from core.config import config_from_dict, services_environment

    data_dir = tmp_path / ".fvlm-services"
    _record(data_dir, "prefect", health_server)
    path, env = services.write_client_env(data_dir)
    assert env == {"PREFECT_API_URL": f"http://127.0.0.1:{health_server}/api"}
    text = path.read_text()
    assert "MLFLOW_TRACKING_URI=" not in text and "unset MLFLOW_TRACKING_URI" in text
    # an MLflow of ours recorded on another port never makes a command trust whatever answers params' port
    config = config_from_dict({"services": {"mlflow_port": health_server}}, root=tmp_path, environ={})
    _record(data_dir, "mlflow", free_port_now())
    assert "MLFLOW_TRACKING_URI" not in services_environment(config, environ={})


def test_a_server_that_does_not_start_can_be_done_without(monkeypatch: pytest.MonkeyPatch) -> None:
    def too_busy(**_: object) -> services.TemporaryServer:
        raise services.ServiceError("temporary Prefect server on port 1 did not start (not healthy within 600 s)")

    monkeypatch.setattr(services, "start_temporary_server", too_busy)
    with services.shared_prefect_server(or_none=True) as server:  # what `fvlm demo` does
        assert not server.started and "did not start" in server.failure
    with pytest.raises(services.ServiceError), services.shared_prefect_server():  # `fvlm pipeline`: a flow itself
        pass


def free_port_now() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        # the UI is told the chosen port; status, and every command, find the servers without being told
        with urllib.request.urlopen(env["PREFECT_API_URL"].removesuffix("/api") + "/ui-settings", timeout=5) as r:
            assert json.loads(r.read())["api_url"] == env["PREFECT_API_URL"]
        assert main(["services", "status", "--data-dir", str(data_dir)]) == 0
        from core.config import config_from_dict, services_environment

        config = config_from_dict({"services": {"data_dir": str(data_dir)}}, root=tmp_path, environ={})
        found = services_environment(config, environ={})
        assert found["PREFECT_API_URL"] == env["PREFECT_API_URL"]
        assert found["MLFLOW_TRACKING_URI"] == env["MLFLOW_TRACKING_URI"]
        # a second `up` leaves the running servers alone
        assert main(["services", "up", *common]) == 0
        assert pids == {name: json.loads((data_dir / "run" / f"{name}.pid").read_text())["pid"] for name in pids}
        assert (data_dir / "prefect" / "prefect.db").exists() and (data_dir / "mlflow" / "mlflow.db").exists()
    finally:
        assert main(["services", "down", *common]) == 0
    assert not any((data_dir / "run").glob("*.pid"))
    assert not any(_alive(pid) for pid in pids.values())
    assert main(["services", "status", *common]) == 3


def test_the_runs_temporary_server_serves_the_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL `fvlm demo` prints opens Prefect's UI (Prefect's own temporary mode answers "Not Found")."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT__SERVER_EPHEMERAL", "1")  # inherited from a Prefect process: must not hide the UI
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    with services.shared_prefect_server(timeout_s=180, log_dir=tmp_path / "logs") as server:
        assert server.started and server.ui_url == server.api_url.removesuffix("/api")
        page = urllib.request.Request(f"{server.ui_url}/dashboard", headers={"Accept": "text/html"})
        with urllib.request.urlopen(page, timeout=30) as response:  # noqa: S310 - 127.0.0.1
            assert response.status == 200 and b"<!DOCTYPE html>" in response.read(200)
        with urllib.request.urlopen(f"{server.ui_url}/ui-settings", timeout=30) as response:  # noqa: S310
            assert json.loads(response.read())["api_url"] == server.api_url  # not :4200


def test_the_runs_server_keeps_the_standard_library_first_on_its_path() -> None:
    """No ``--app-dir <site-packages>`` (Prefect's own command): it puts site-packages ahead of the standard
    library, and PyPI's 2015 ``argparse.py`` there (unittest2 <- batchgenerators <- nnU-Net) then kills the
    server at start (pydantic-settings imports ``argparse.BooleanOptionalAction``)."""
    command = services.temporary_server_command(4321)
    assert "--app-dir" not in command
    assert command[:3] == [sys.executable, "-m", "uvicorn"] and "prefect.server.api.server:create_app" in command
