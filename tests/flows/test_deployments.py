"""Deployments: ingest folder handling, and (slow) an interval-scheduled deployment firing on a real server."""

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

from flows.deployments import collect_incoming


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_record(recorded: list[list[Path]]):
    def record(paths: list[Path]) -> list[Path]:
        recorded.append(list(paths))
        return list(paths)

    return record


def test_collect_incoming_by_dicom_identity_not_folder_name(tmp_path: Path) -> None:
    """A new study whose folder name is taken lands as a new study; an extra series joins its study."""
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    known_uid = new_uid()
    write_ct_series(raw / "study_0000" / "s1", n_slices=3, study_uid=known_uid, series_number=1)
    before = {p: p.read_bytes() for p in _files(raw)}
    # 1) a different study in a folder named like the known one, 2) an extra series of the known study
    # in a folder named differently, 3) a non-DICOM file, 4) a reports CSV, 5) a bad CSV
    write_ct_series(watch / "study_0000" / "s1", n_slices=3, study_uid=new_uid(), series_number=1, seed=1)
    write_ct_series(watch / "other_name" / "s2", n_slices=2, study_uid=known_uid, series_number=2, seed=2)
    (watch / "study_0000" / "notes.txt").write_text("not dicom")
    reports = tmp_path / "reports.csv"
    reports.write_text("study_key,Findings,Impression\nB,normal,none\n")
    (watch / "new.csv").write_text("study_key,Findings,Impression\nA,nodule,small\nB,dup,dup\n")
    (watch / "bad.csv").write_text("wrong,columns\n1,2\n")
    incoming = {p: _sha(p) for p in _files(watch)}

    recorded: list[list[Path]] = []
    cached: set[str] = set()
    result = collect_incoming(
        watch,
        raw,
        reports,
        settle_s=0,
        record=_fake_record(recorded),
        in_cache=lambda path: cached.add(_sha(path)) or True,
    )

    assert result.studies_moved == 1 and result.files_added_to_existing == 2
    assert result.files_ingested == 5 and result.duplicates == 0
    new_dirs = [raw / name for name in result.new_study_dirs]
    assert len(new_dirs) == 1 and new_dirs[0].name.startswith("study_0000-")
    assert len(_files(new_dirs[0])) == 3
    assert len(_files(raw / "study_0000" / "s2")) == 2  # the extra series joined its study
    assert all(path.read_bytes() == data for path, data in before.items())  # nothing overwritten
    assert result.report_rows_added == 1 and result.report_rows_skipped == 1
    assert reports.read_text().splitlines()[-1] == "A,nodule,small"
    assert recorded and raw in recorded[0]
    # every incoming file: ingested (its bytes in the raw tree, recorded), or rejected (kept, with a reason)
    raw_hashes = {_sha(p) for p in _files(raw)} | {_sha(p) for p in _files(tmp_path / "ingested_reports")}
    rejected_dir = watch / "rejected"
    rejected_hashes = {_sha(p) for p in _files(rejected_dir) if p.name != "reasons.csv"}
    for path, digest in incoming.items():
        assert digest in raw_hashes or digest in rejected_hashes, path
    assert len(result.rejected) == 2
    reasons = (rejected_dir / "reasons.csv").read_text()
    assert "notes.txt" in reasons and "bad.csv" in reasons and "not a readable DICOM" in reasons
    assert [p.name for p in watch.iterdir() if not p.name.startswith(".")] == ["rejected"]
    # nothing new: nothing to do
    again = collect_incoming(watch, raw, reports, settle_s=0, record=_fake_record(recorded))
    assert not again.changed and again.files_ingested == 0


def test_collect_incoming_same_files_again_are_duplicates(tmp_path: Path) -> None:
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    write_ct_series(raw / "a" / "s1", n_slices=3, study_uid=new_uid())
    shutil.copytree(raw / "a", watch / "a_again")
    result = collect_incoming(watch, raw, settle_s=0, record=_fake_record([]))
    assert result.files_ingested == 3 and result.duplicates == 3 and not result.changed
    assert sorted(p.name for p in raw.iterdir()) == ["a"]


def test_collect_incoming_keeps_everything_when_recording_fails(tmp_path: Path) -> None:
    from flows.deployments import IngestError
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    write_ct_series(watch / "x" / "s1", n_slices=2, study_uid=new_uid())
    before = _files(watch)

    def failing(paths: list[Path]) -> list[Path]:
        raise RuntimeError("dvc add failed")

    with pytest.raises(RuntimeError):
        collect_incoming(watch, raw, settle_s=0, record=failing)
    assert _files(watch) == before  # nothing left the watch folder
    with pytest.raises(IngestError):  # recorded but not found in the cache: still nothing removed
        collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), in_cache=lambda path: False)
    assert _files(watch) == before
    done = collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), in_cache=lambda path: True)
    assert done.files_ingested == 2 and done.duplicates == 2 and not _files(watch)


def test_collect_incoming_leaves_folders_still_being_copied(tmp_path: Path) -> None:
    (tmp_path / "in" / "fresh").mkdir(parents=True)
    (tmp_path / "in" / "fresh" / "1.dcm").write_bytes(b"x")
    result = collect_incoming(tmp_path / "in", tmp_path / "raw", settle_s=3600)
    assert result.not_settled == 1 and result.studies_moved == 0
    assert (tmp_path / "in" / "fresh" / "1.dcm").exists()


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
