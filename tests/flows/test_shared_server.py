"""No per-stage server tax: a lone stage command runs its library without any Prefect server; the stage
commands of one `fvlm demo` / `fvlm pipeline` report to the one server it started (or the services')."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from flows.services import shared_prefect_server, start_temporary_server

REPO = Path(__file__).resolve().parents[2]
FINDINGS = "A 6 mm nodule in the right lung upper lobe. No pleural effusion."


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text("services:\n  data_dir: svc\n")
    (tmp_path / "reports.csv").write_text(f"study_key,Findings,Impression\n1.2.3,{FINDINGS},Lung nodule.\n")
    return tmp_path


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FVLM_NO_FLOWS", "PREFECT_API_URL")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(project / "prefect-home"), **extra)
    return env


# run the real command in a fresh process, then say whether Prefect was ever imported by it
_PROBE = (
    "import sys; from fvlm.cli import main; code = main(sys.argv[1:]); "
    "print('prefect imported:', 'prefect' in sys.modules); sys.exit(code)"
)


def _parse_reports(project: Path, out: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", _PROBE, "parse-reports", "reports.csv", f"{out}/reports.parquet"]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)


def test_lone_stage_command_without_server_runs_the_library(project: Path) -> None:
    result = _parse_reports(project, "out", _env(project))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prefect imported: False" in result.stdout  # so no temporary server can have started
    assert "Starting temporary server" not in result.stderr
    assert (project / "out" / "reports.studies.parquet").is_file()
    records = [json.loads(line) for line in (project / "svc" / "logs" / "stage-runs.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["mode"], r["reason"]) for r in records] == [
        ("parse-reports", "library", "no Prefect server")
    ]
    assert records[0]["seconds"] > 0


def _flow_runs(api_url: str, flow_name: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{api_url}/flows/name/{flow_name}", timeout=10) as response:  # noqa: S310
        flow_id = json.loads(response.read())["id"]
    body = json.dumps({"flows": {"id": {"any_": [flow_id]}}}).encode()
    request = urllib.request.Request(
        f"{api_url}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def test_stage_commands_share_one_server(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stage commands under one shared server: both run as flows on it, neither starts its own."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(project / "prefect-home"))
    with shared_prefect_server(timeout_s=180, log_dir=project / "logs") as server:
        assert server.started and os.environ["PREFECT_API_URL"] == server.api_url
        for out in ("first", "second"):
            result = _parse_reports(project, out, _env(project, PREFECT_API_URL=server.api_url))
            assert result.returncode == 0, result.stderr[-3000:]
            assert "prefect imported: True" in result.stdout
            assert "Starting temporary server" not in result.stderr  # it used ours
        runs = _flow_runs(server.api_url, "fvlm-parse-reports")
        assert len(runs) == 2 and all(run["state_type"] == "COMPLETED" for run in runs)
        process = server.process
    assert process is not None and process.poll() is not None  # stopped with the block
    assert "PREFECT_API_URL" not in os.environ
    assert not (project / "svc" / "logs" / "stage-runs.jsonl").exists()  # flow runs, not library runs


def test_a_configured_server_is_used_not_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    server = start_temporary_server()
    assert not server.started and server.process is None and server.api_url == "http://127.0.0.1:4200/api"
