"""experiments/learnability.py: its verdict against issue #13's bar, and a tiny end-to-end probe run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


def test_target_verdict_needs_the_mean_and_every_scored_label(load_experiment: Callable[[str], ModuleType]) -> None:
    verdict = load_experiment("learnability").target_verdict
    row = {"test_mean_auc": 0.93, "test_auc": {"a": 0.99, "b": 0.80, "c": None}}
    assert "reached: mean 0.9300, 2/2 labels" in verdict(row) and "weakest b 0.800" in verdict(row)
    row = {"test_mean_auc": 0.93, "test_auc": {"a": 0.99, "b": 0.74}}
    assert "not reached" in verdict(row) and "b 0.740" in verdict(row)
    row = {"test_mean_auc": 0.8996, "test_auc": {"a": 0.99, "b": 0.80}}
    assert "not reached: mean 0.8996, 2/2" in verdict(row)


@pytest.mark.slow
def test_learnability_probe_runs_end_to_end(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "learnability"
    command = [
        sys.executable,
        str(repo_root / "experiments" / "learnability.py"),
        *("--no-visibility", "--difficulty", "learnable", "--encoders", "conv"),
        *("--studies", "12", "--steps", "2", "--batch-size", "2", "--workers", "1", "--out", str(out)),
    ]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "target (mean >= 0.90, each label >= 0.75)" in result.stdout
    probe = json.loads((out / "learnability.json").read_text())["probes"][0]
    assert probe["steps"] == 2 and probe["n_train"] + probe["n_test"] == 12
    assert "target (mean >= 0.90" in (out / "learnability.md").read_text()
