"""Smoke test of experiments/ablation.py: two tiny cohorts (one development, one report), 2 steps, the
development phase choosing the best combination on validation, the report phase, the two-level bootstrap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DEV_VARIANTS = ["fvlm", "fvlm+labels", "fvlm+sigmoid", "fvlm+cross", "fvlm+no-ct"]
REPORT_VARIANTS = ["clip", "fvlm", "best"]


@pytest.mark.slow
def test_ablation_script_runs_dev_then_report_phase(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    command = [
        sys.executable,
        str(repo_root / "experiments" / "ablation.py"),
        *("--studies", "24", "--split", "0.5", "0.25", "0.25", "--steps", "2", "--batch-size", "4"),
        *("--workers", "1", "--bootstrap", "20"),
        *("--dev-cohort-seeds", "1", "--dev-train-seeds", "0", "--report-cohort-seeds", "2"),
        *("--report-train-seeds", "0", "--variants", *REPORT_VARIANTS, "--out", str(out)),
    ]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = json.loads((out / "ablation.json").read_text())
    assert results["steps"] == 2 and results["dev_cohort_seeds"] == [1] and results["report_cohort_seeds"] == [2]
    assert [run["variant"] for run in results["dev_runs"]] == DEV_VARIANTS
    assert [run["variant"] for run in results["runs"]] == REPORT_VARIANTS
    assert all(run["cohort_seed"] == 2 and run["phase"] == "report" for run in results["runs"])
    assert set(results["best"]) <= {"labels", "sigmoid", "cross", "no-ct"}
    for run in results["runs"]:
        assert run["steps"] == 2 and run["n_test"] >= 1 and Path(run["study_scores"]).is_file()
    summary = results["summary"]["variants"]
    assert set(summary) == set(REPORT_VARIANTS) and "delta_vs_clip_ci95" in summary["fvlm"]
    # each variant really trained with its own loss settings
    from core.config import load_config

    work = out / "work"
    clip_train = load_config(work / "cohort_2" / "params_clip_s0.yaml").train
    fvlm_train = load_config(work / "cohort_2" / "params_fvlm_s0.yaml").train
    labels_train = load_config(work / "cohort_1" / "params_fvlm_labels_s0.yaml").train
    assert clip_train.loss == "clip" and clip_train.steps == 2 and clip_train.batch_size == 4
    assert fvlm_train.loss == "fvlm" and fvlm_train.normal_positives and fvlm_train.coteaching_alpha == 0.5
    assert labels_train.label_loss_weight == 1.0
    table = (out / "ablation.md").read_text()
    assert "global CLIP" in table and "development cohort seeds [1]" in table and "report cohort seeds [2]" in table

    # a second run reuses every cohort and every finished run: nothing new in the logs
    logs = {cohort: (work / cohort / "ablation.log").read_text() for cohort in ("cohort_1", "cohort_2")}
    again = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reusing cohort") == 2
    assert all((work / cohort / "ablation.log").read_text() == text for cohort, text in logs.items())
