"""fvlm pipeline: real dvc pull / repro / push in a tiny DVC project, report of metrics and MLflow fields."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import PipelineReport, _find_key, dvc_remote, pipeline_flow
from flows.subprocesses import CommandError


def test_find_key_searches_nested_metrics() -> None:
    assert _find_key({"a": {"b": {"run_id": "x"}}}, ["mlflow_run_id", "run_id"]) == "x"
    assert _find_key({"a": 1}, ["run_id"]) is None


def test_report_markdown_lists_run_and_metrics() -> None:
    report = PipelineReport(
        repo_root="/r",
        mlflow_run_id="abc",
        registry_version="2",
        registered_model="m",
        metrics={"eval": {"mean": {"auc": 0.5}}},
    )
    text = report.markdown()
    assert "abc" in text and "version 2" in text and "| mean.auc | 0.5 |" in text


def test_dvc_remote_detection(make_dvc_project: Callable[..., Any], tmp_path: Path) -> None:
    assert dvc_remote(make_dvc_project(tmp_path / "with")) == "local"
    assert dvc_remote(make_dvc_project(tmp_path / "without", with_remote=False)) is None


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_repro_push_report_and_noop_rerun(make_dvc_project: Callable[..., Any], tmp_path: Path) -> None:
    project = make_dvc_project(tmp_path / "proj")
    report = pipeline_flow(repo_root=str(project))
    assert report["reproduced"] and report["pushed"] and report["remote"] == "local"
    assert report["mlflow_run_id"] == "run-123"
    assert report["registry_version"] == "4" and report["promoted_alias"] == "champion"
    assert report["metrics"]["eval"]["mean"]["auc"] == 0.75
    assert (project / "data" / "out" / "result.txt").read_text() == "HELLO\n"
    assert any((tmp_path / "proj-remote").rglob("*")), "dvc push put nothing in the remote"
    # nothing new: the stage does not run again
    pipeline_flow(repo_root=str(project))
    assert (project / "runs.txt").read_text() == "x"
    # a fresh copy of the project without the outputs gets them back through dvc pull
    import shutil

    shutil.rmtree(project / "data" / "out")
    shutil.rmtree(project / ".dvc" / "cache")
    pipeline_flow(repo_root=str(project), push=False)
    assert (project / "data" / "out" / "result.txt").read_text() == "HELLO\n"
    assert (project / "runs.txt").read_text() == "x", "pulled outputs must not be recomputed"


@pytest.mark.usefixtures("prefect_harness")
def test_failing_stage_fails_the_pipeline_and_pushes_nothing(
    make_dvc_project: Callable[..., Any], tmp_path: Path
) -> None:
    project = make_dvc_project(tmp_path / "bad")
    (project / "data" / "input.txt").write_text("FAIL\n")
    with pytest.raises(CommandError) as info:
        pipeline_flow(repo_root=str(project))
    assert info.value.returncode != 0
    assert not (tmp_path / "bad-remote").exists() or not any((tmp_path / "bad-remote").rglob("*"))


@pytest.mark.slow  # creating an MLflow SQLite store runs its migrations (10-50 s)
def test_champion_version_comes_from_the_registry(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import fill_mlflow_fields

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("fvlm-ct")
    (tmp_path / "model").mkdir()
    version = client.create_model_version("fvlm-ct", source=str(tmp_path / "model"))
    client.set_registered_model_alias("fvlm-ct", "champion", version.version)
    report = PipelineReport(repo_root=str(tmp_path), metrics={"train": {"run_id": "t1"}, "eval": {"promoted": False}})
    fill_mlflow_fields(
        report, tracking_uri="sqlite:///mlflow.db", registered_model="fvlm-ct", alias="champion", root=tmp_path
    )
    assert report.mlflow_run_id == "t1" and report.champion_version == str(version.version)
    assert report.promoted_alias is None
