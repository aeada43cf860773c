"""Deployments: the cron listing, the no-server error, and (slow) scheduled deployments firing on a real server.

The watch-folder ingest library the ingest flow calls is tested in tests/preprocessing/test_ingest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def test_deploy_dry_run_lists_cron_schedules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fvlm.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("orchestration: {ingest_cron: '5 1 * * *', train_cron: '0 3 * * 0'}\n")
    assert main(["--params", str(params), "deploy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ingest-nightly: schedule 5 1 * * *" in out and "train-weekly: schedule 0 3 * * 0" in out


def test_deploy_without_server_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fvlm.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("profile: demo\n")
    assert main(["--params", str(params), "deploy"]) == 2
    assert "fvlm services up" in capsys.readouterr().err


def _completed_runs(api_url: str) -> list[dict]:
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}).encode()
    request = urllib.request.Request(
        f"{api_url}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_interval_deployment_fires_and_completes_on_a_real_server(
    free_port: Callable[..., Any], make_dvc_project: Callable[..., Any], tmp_path: Path
) -> None:
    from flows import services

    project = make_dvc_project(tmp_path / "proj")
    (project / "data" / "incoming" / "study1").mkdir(parents=True)
    (project / "data" / "incoming" / "study1" / "1.dcm").write_bytes(b"x")
    data_dir = tmp_path / "svc"
    specs = services.service_specs(data_dir, prefect_port=free_port(), mlflow_port=free_port())
    services.start(data_dir, specs, ["prefect"], timeout_s=150, die_with_parent=True)
    api_url = specs["prefect"].health_url.removesuffix("/health")
    serve = None
    try:
        env = {**os.environ, "PREFECT_API_URL": api_url}
        env.pop("PREFECT_HOME", None)
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fvlm.cli",
                "--params",
                str(project / "params.yaml"),
                "deploy",
                "--only",
                "ingest",
                "--interval",
                "5",
                "--settle",
                "0",
                "--targets",
                "evaluate",
                "--no-push",
            ],
            cwd=project,
            env=env,
            stdout=open(tmp_path / "serve.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        runs: list[dict] = []
        while time.monotonic() < deadline and not runs:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(3)
            runs = [r for r in _completed_runs(api_url) if r.get("deployment_id")]
        assert runs, "no scheduled run finished in time:\n" + (tmp_path / "serve.log").read_text()[-3000:]
        assert runs[0]["state_type"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
        assert (project / "data" / "demo" / "dicom" / "study1" / "1.dcm").exists()
        assert (project / "metrics" / "eval.json").exists()
    finally:
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGINT)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
        services.stop(data_dir, specs, ["prefect"])


@pytest.mark.slow
def test_prefect_yaml_registers_both_scheduled_deployments(
    free_port: Callable[..., Any], tmp_path: Path, repo_root: Path
) -> None:
    from flows import services

    data_dir = tmp_path / "svc"
    specs = services.service_specs(data_dir, prefect_port=free_port(), mlflow_port=free_port())
    services.start(data_dir, specs, ["prefect"], timeout_s=150, die_with_parent=True)
    env = {**os.environ, "PREFECT_API_URL": specs["prefect"].health_url.removesuffix("/health")}
    prefect = str(Path(sys.executable).parent / "prefect")
    try:
        subprocess.run(
            [prefect, "work-pool", "create", "fvlm-process", "--type", "process"],
            env=env,
            check=True,
            capture_output=True,
            cwd=repo_root,
        )
        deploy = subprocess.run(
            [prefect, "--no-prompt", "deploy", "--all"], env=env, capture_output=True, text=True, cwd=repo_root
        )
        assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
        for name, cron in (
            ("fvlm-ingest/ingest-nightly", "0 2 * * *"),
            ("fvlm-train-evaluate/train-weekly", "0 4 * * 6"),
        ):
            shown = subprocess.run([prefect, "deployment", "inspect", name], env=env, capture_output=True, text=True)
            assert shown.returncode == 0, shown.stderr
            assert f"'cron': '{cron}'" in shown.stdout and "fvlm-process" in shown.stdout
    finally:
        services.stop(data_dir, specs, ["prefect"])


@pytest.mark.slow
def test_work_pool_deployment_runs_on_a_process_worker(
    free_port: Callable[..., Any], make_dvc_project: Callable[..., Any], tmp_path: Path, repo_root: Path
) -> None:
    """prefect.yaml + `fvlm services up --worker`: a run of the ingest deployment completes on the worker."""
    from flows import services

    project = make_dvc_project(tmp_path / "proj")
    shutil.copy(repo_root / "prefect.yaml", project / "prefect.yaml")
    (project / "flows").symlink_to(repo_root / "flows")  # the entrypoint flows/deployments.py
    data_dir = tmp_path / "svc"
    specs = services.service_specs(data_dir, prefect_port=free_port(), mlflow_port=free_port())
    env = {**os.environ, "PREFECT_API_URL": specs["prefect"].health_url.removesuffix("/health")}
    prefect = str(Path(sys.executable).parent / "prefect")
    try:
        services.start(data_dir, specs, ["prefect", "worker"], timeout_s=150, cwd=project, die_with_parent=True)
        deploy = subprocess.run(
            [prefect, "--no-prompt", "deploy", "--name", "ingest-nightly"],
            env=env,
            capture_output=True,
            text=True,
            cwd=project,
        )
        assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
        started = subprocess.run(
            [
                prefect,
                "deployment",
                "run",
                "fvlm-ingest/ingest-nightly",
                "--param",
                'targets=["evaluate"]',
                "--param",
                "push=false",
                "--param",
                "settle_s=0",
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=project,
        )
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        deadline = time.monotonic() + 240
        runs: list[dict] = []
        while time.monotonic() < deadline and not runs:
            time.sleep(3)
            runs = [r for r in _completed_runs(env["PREFECT_API_URL"]) if r.get("deployment_id")]
        log = (data_dir / "logs" / "worker.log").read_text()[-3000:]
        assert runs and runs[0]["state_type"] == "COMPLETED", log
        assert (project / "metrics" / "eval.json").exists()
    finally:
        services.stop(data_dir, specs, ["worker", "prefect"])
