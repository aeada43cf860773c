"""`fvlm train` -> `fvlm evaluate` on real Parquet shards (shard schema + training.trainer.data reader)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from tests.training.samples import write_shard_split


def test_train_then_evaluate_from_shards_via_cli(tmp_path: Path, anatomies, make_samples, tiny_config, capsys) -> None:  # noqa: ANN001
    from fvlm.cli import main

    shards = tmp_path / "shards"
    write_shard_split(shards, "train", make_samples(8, seed=21), anatomies)
    write_shard_split(shards, "val", make_samples(6, seed=22), anatomies)
    write_shard_split(shards, "test", make_samples(6, seed=23), anatomies)
    config = tiny_config(tmp_path, evaluate={"eval_mode": "anatomy", "bootstrap": 10})
    raw = config.model_dump(mode="json", exclude={"root"})
    raw["paths"].update({"shards": "shards", "models": "models", "metrics": "metrics"})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**raw, "profiles": {"demo": {}}}))

    assert main(["--params", str(params), "train", "--steps", "3", "--no-tracking"]) == 0
    train_metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    train_info = json.loads((tmp_path / "metrics" / "train.info.json").read_text())
    assert train_metrics["steps"] == 3 and train_info["run_id"] is None and "run_id" not in train_metrics
    assert math.isfinite(train_metrics["first_loss_avg"]) and math.isfinite(train_metrics["final_loss_avg"])
    assert (tmp_path / "metrics" / "plots" / "train_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "models" / "model" / "zero_shot.json").is_file()
    assert (tmp_path / "models" / "checkpoints" / "last.pt").is_file()

    # resume to a longer run: continues from step 3
    assert main(["--params", str(params), "train", "--steps", "4", "--resume", "--no-tracking"]) == 0
    assert json.loads((tmp_path / "metrics" / "train.json").read_text())["resumed_from_step"] == 3

    capsys.readouterr()
    assert main(["--params", str(params), "evaluate", "--no-tracking"]) == 0
    printed = capsys.readouterr().out
    assert (
        "champion: not promoted (tracking disabled: no registry to promote in; "
        "floor: val_mean_auc_ci_low > 0.5)" in printed
    )
    summary = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    info = json.loads((tmp_path / "metrics" / "eval.info.json").read_text())
    assert summary["n_test"] == 6 and summary["n_val"] == 6
    assert info["run_id"] is None and summary["promoted"] == 0
    assert info["promotion_reason"] == "tracking disabled: no registry to promote in"
    # the DVC metrics files hold numbers only (dvc exp show / metrics diff compare them); strings go to .info.json
    for name in ("train.json", "eval.json"):
        numbers = json.loads((tmp_path / "metrics" / name).read_text())
        assert _leaves_are_numbers(numbers), (name, numbers)
    assert isinstance(summary["mean_auc_ci_low"], float) and summary["mean_auc_ci_low"] <= summary["mean_auc"]

    # what `fvlm demo` prints at the end: loss first-10 -> last-10, test mean AUC with its CI
    from fvlm.commands.demo import learned_summary

    lines = learned_summary(tmp_path / "metrics", tmp_path)
    loss_line = next(line for line in lines if "training loss" in line)
    assert "first-10 mean" in loss_line and "last-10 mean" in loss_line and "metrics/plots/train_loss.png" in loss_line
    auc_line = next(line for line in lines if "test mean AUC" in line)
    assert f"{summary['mean_auc']:.3f}" in auc_line and "95 % CI" in auc_line and "6 test studies" in auc_line
    assert set(summary["val_threshold"]) >= {"auc", "accuracy", "sensitivity", "specificity", "f1", "f1_weighted"}
    report = json.loads((tmp_path / "data" / "eval" / "eval_report.json").read_text())
    assert (tmp_path / "data" / "eval" / "roc" / "roc_all.png").is_file()
    assert len(report["labels"]) == 16


def test_train_cli_reports_missing_shards(tmp_path: Path, capsys, tiny_config) -> None:  # noqa: ANN001
    from fvlm.cli import main

    config = tiny_config(tmp_path)
    raw = config.model_dump(mode="json", exclude={"root"})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**raw, "profiles": {"demo": {}}}))
    assert main(["--params", str(params), "train", "--shards", str(tmp_path / "nowhere"), "--no-tracking"]) == 1
    assert "nowhere" in capsys.readouterr().err


def _leaves_are_numbers(data: object) -> bool:
    if isinstance(data, dict):
        return all(_leaves_are_numbers(value) for value in data.values())
    return data is None or (isinstance(data, (int, float)) and not isinstance(data, bool))
