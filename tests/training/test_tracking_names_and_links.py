"""MLflow runs a person can find and open: names after the DVC experiment / stage, git + DVC tags, http
artifact URLs for the UIs (issue #31), QC pictures logged to a ``segment-qc`` run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def test_run_names_follow_the_dvc_experiment_else_stage_and_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.tracking.runs import dvc_tags, run_name_for

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert run_name_for("train", "200-steps") == "train-200-steps"
    assert run_name_for("eval", "v3") == "eval-v3"
    assert dvc_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "tawny-sash")
    monkeypatch.setenv("DVC_STAGE", "train")
    assert run_name_for("train", "200-steps") == "tawny-sash-train-200-steps"
    assert dvc_tags() == {"dvc_experiment": "tawny-sash", "dvc_stage": "train"}


def test_make_tracker_tags_git_commit_and_dvc_experiment(
    tmp_path: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.tracking.runs import make_tracker, run_name_for

    monkeypatch.setenv("DVC_EXP_NAME", "exp-a1")
    monkeypatch.setenv("DVC_STAGE", "evaluate")
    config = tiny_config(tmp_path, tracking={"enabled": True})
    tracker = make_tracker(config.tracking, config.root, is_main_process=True, run_name=run_name_for("eval", "v1"))
    run = tracker.client.get_run(tracker.run_id)
    tracker.end()
    assert run.info.run_name == "exp-a1-eval-v1"
    assert run.data.tags["dvc_experiment"] == "exp-a1" and run.data.tags["dvc_stage"] == "evaluate"
    assert run.data.tags["git_commit"]


def test_artifact_urls_are_http_only() -> None:
    from training.tracking.runs import artifact_url, run_artifacts_url

    assert artifact_url("sqlite:///mlflow.db", "r1", "qc/a.png") is None  # no server: the path as text
    assert artifact_url("http://127.0.0.1:5000/", "r1", "qc/a b.png") == (
        "http://127.0.0.1:5000/get-artifact?path=qc%2Fa+b.png&run_uuid=r1"
    )
    assert run_artifacts_url("http://h:5000", "7", "r1") == "http://h:5000/#/experiments/7/runs/r1/artifacts"
    assert run_artifacts_url("file:///tmp/mlruns", "7", "r1") is None


def test_files_log_to_a_finished_run(tmp_path: Path, tiny_config) -> None:
    from training.tracking.runs import log_files, make_tracker

    config = tiny_config(tmp_path, tracking={"enabled": True})
    tracker = make_tracker(config.tracking, config.root, is_main_process=True, run_name="t")
    tracker.end()  # the loss curve is drawn after the run ended
    png = tmp_path / "train_loss.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert log_files(tracker.tracking_uri, tracker.run_id, {"plots": png}) == ["plots/train_loss.png"]
    assert [a.path for a in tracker.client.list_artifacts(tracker.run_id, "plots")] == ["plots/train_loss.png"]


def test_qc_pictures_go_to_an_mlflow_run_and_the_artifact_links_them_by_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.stages as stages
    import training.tracking.runs as runs

    qc = tmp_path / "seg" / "qc"
    qc.mkdir(parents=True)
    for study in ("s1", "s2"):
        (qc / f"{study}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    rows: list[dict[str, Any]] = [
        {"study_id": "s1", "qc_path": "qc/s1.png"},
        {"study_id": "s2", "qc_path": "qc/s2.png"},
        {"study_id": "s3"},  # quarantined: no picture
    ]
    monkeypatch.chdir(tmp_path)  # an SQLite store's default artifact root is ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert stages.publish_qc_pictures(tmp_path / "seg", rows) is None  # no server: nothing logged, no link

    written: dict[str, str] = {}
    monkeypatch.setattr(stages, "_markdown", lambda key, text, description: written.update({key: text}))
    # an SQLite store stands in for the server (its URLs are only formatted here, never fetched)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(runs, "served_by_http", lambda uri: True)
    run_id = stages.publish_qc_pictures(tmp_path / "seg", rows)
    assert run_id
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(run_id, "qc")} == {"qc/s1.png", "qc/s2.png"}
    assert client.get_run(run_id).info.run_name.endswith("segment-qc")
    text = written["segment-qc"]
    assert f"get-artifact?path=qc%2Fs1.png&run_uuid={run_id}" in text and "file://" not in text
    assert f"/runs/{run_id}/artifacts" in text


def test_fvlm_train_logs_the_loss_curve_to_its_run(tmp_path: Path, tiny_config) -> None:
    from fvlm.commands.train import _log_loss_curve
    from fvlm.plot_data import write_loss_curve, write_loss_curve_png
    from training.tracking.runs import make_tracker
    from training.trainer.job import TrainJob

    config = tiny_config(tmp_path, tracking={"enabled": True})
    job = TrainJob.from_config(config, metrics=tmp_path / "metrics" / "train.json")
    tracker = make_tracker(config.tracking, config.root, is_main_process=True, run_name="train-3-steps")
    tracker.end()
    files = [write_loss_curve_png(job.metrics_path, [3.0, 2.5, 2.0]), write_loss_curve(job.metrics_path, [3.0, 2.5])]
    assert _log_loss_curve(job, tracker.run_id, files) is None  # SQLite: no http URL to print
    logged = {a.path for a in tracker.client.list_artifacts(tracker.run_id, "plots")}
    assert logged == {"plots/train_loss.png", "plots/train_loss.csv"}
    assert _log_loss_curve(job, None, files) is None  # --no-tracking / another rank: nothing to log
