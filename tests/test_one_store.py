"""One set of stores: commands use the running services, else the very files the services will open."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

from core.config import config_from_dict, services_environment


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


def test_without_services_the_files_the_services_open(tmp_path: Path) -> None:
    config = config_from_dict({}, root=tmp_path, environ={})
    added = services_environment(config, environ={})
    assert added == {"PREFECT_HOME": str((tmp_path / ".fvlm-services" / "prefect").resolve())}
    assert config.tracking.mlflow_tracking_uri == "sqlite:///.fvlm-services/mlflow/mlflow.db"
    from flows.services import service_specs

    mlflow = service_specs(tmp_path / ".fvlm-services")["mlflow"].command
    assert f"sqlite:///{(tmp_path / '.fvlm-services' / 'mlflow' / 'mlflow.db').resolve()}" in mlflow
    # what the user exported wins
    assert services_environment(config, environ={"PREFECT_API_URL": "http://x/api", "PREFECT_HOME": "/p"}) == {}


def test_running_services_are_used(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        run = tmp_path / ".fvlm-services" / "run"
        run.mkdir(parents=True)
        for name in ("prefect", "mlflow"):
            (run / f"{name}.pid").write_text(json.dumps({"pid": os.getpid(), "command": ["x"], "url": ""}))
        config = config_from_dict({"services": {"prefect_port": port, "mlflow_port": port}}, root=tmp_path, environ={})
        added = services_environment(config, environ={})
        assert added == {
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        }
    finally:
        server.shutdown()
