"""Quiet and honest console under flows (issue #31): one timestamp per line, a failed `dvc pull` stops
`fvlm pipeline` unless asked to go on, metrics files read with their .info.json beside them."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

import flows.pipeline as pipeline
from flows.subprocesses import CommandResult, run_command, without_child_stamp


def test_child_timestamps_are_dropped_so_each_line_has_one(tmp_path: Path) -> None:
    assert without_child_stamp("12:03:04 convert: 3 studies") == "convert: 3 studies"
    assert without_child_stamp("Running stage 'convert':") == "Running stage 'convert':"
    lines: list[str] = []

    class Log:
        def info(self, template: str, line: str) -> None:
            lines.append(template % line)

    script = "print('12:03:04 segment: 2 studies'); print('Running stage x'); print('at 12:03:04 later')"
    run_command([sys.executable, "-c", script], cwd=tmp_path, log=Log())
    assert lines == ["segment: 2 studies", "Running stage x", "at 12:03:04 later"]


def _failed_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = "Collecting\nERROR: failed to pull data from the cloud - Checkout failed for following targets"
    monkeypatch.setattr(pipeline, "run_command", lambda command, **_: CommandResult(list(command), 1, tail))


def test_a_failed_pull_stops_the_pipeline_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _failed_pull(monkeypatch)
    with pytest.raises(pipeline.PullFailed) as raised:
        pipeline.dvc_pull.fn(str(tmp_path), "origin")
    message = str(raised.value)
    assert "\n" not in message and "ERROR: failed to pull data from the cloud" in message
    assert "--allow-missing-remote" in message


def test_allow_missing_remote_goes_on_with_what_is_local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _failed_pull(monkeypatch)
    with caplog.at_level(logging.WARNING):
        note = pipeline.dvc_pull.fn(str(tmp_path), "origin", allow_missing_remote=True)
    assert note == "dvc pull exited 1" and "going on with what is local" in caplog.text


def test_pipeline_cli_has_the_allow_missing_remote_flag() -> None:
    from fvlm.cli import build_parser

    args = build_parser().parse_args(["pipeline", "--allow-missing-remote"])
    assert args.allow_missing_remote is True
    assert build_parser().parse_args(["pipeline"]).allow_missing_remote is False


def test_report_reads_numbers_and_info_as_one_entry(tmp_path: Path) -> None:
    (tmp_path / "eval.json").write_text(json.dumps({"mean_auc": 0.7, "promoted": 1}))
    (tmp_path / "eval.info.json").write_text(json.dumps({"run_id": "r-eval", "model_version": "4"}))
    (tmp_path / "train.json").write_text(json.dumps({"steps": 3}))
    (tmp_path / "train.info.json").write_text(json.dumps({"run_id": "r-train"}))
    metrics = pipeline.read_metrics(tmp_path)
    assert set(metrics) == {"eval", "train"}
    assert metrics["eval"] == {"mean_auc": 0.7, "promoted": 1, "run_id": "r-eval", "model_version": "4"}
    report = pipeline.PipelineReport(repo_root=str(tmp_path), metrics=metrics)
    pipeline.fill_mlflow_fields(
        report,
        tracking_uri=f"sqlite:///{tmp_path / 'absent.db'}",
        registered_model="m",
        alias="champion",
        root=tmp_path,
    )
    assert report.mlflow_run_id == "r-train" and report.eval_run_id == "r-eval"
    assert report.registry_version == "4" and report.promoted_alias == "champion"  # promoted: 1


@pytest.mark.usefixtures("prefect_harness")
def test_progress_under_a_flow_counts_items_as_they_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    """threads runner: a batch function taking ``progress`` ticks the parent's bar per item, so the bar
    moves before a batch ends (the segment bar sat at 0/15 until the first batch ended)."""
    from prefect import flow

    import core.progress
    from flows.batching import run_batched

    seen: list[int] = []

    class Bar:
        count = 0

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> bool:
            return False

        def advance(self, n: int = 1, **fields: object) -> None:
            self.count += n
            seen.append(self.count)

    monkeypatch.setattr(core.progress, "progress", lambda *args, **kwargs: Bar())
    counts_at_batch_end: list[int] = []

    def batch_fn(items: list[int], progress: object = None) -> None:
        for position, item in enumerate(items, 1):
            progress(position, len(items), item)  # type: ignore[operator]
        counts_at_batch_end.append(max(seen, default=0))

    @flow(name="ticks")
    def ticks() -> object:
        return run_batched(list(range(6)), batch_fn, batch_size=3, stage="ticks", retry_delay_s=0, artifact=False)

    summary = ticks()
    assert summary.counts["ok"] == 6  # type: ignore[attr-defined]
    assert sorted(set(seen)) == [1, 2, 3, 4, 5, 6] and max(seen) == 6  # each item counted once
    assert all(count >= 3 for count in counts_at_batch_end)  # the bar moved inside the batch
