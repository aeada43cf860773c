"""Smoke test of experiments/ablation.py: a tiny cohort, 2 steps, one seed, all four variants, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

VARIANTS = ["clip", "fvlm", "fvlm+np", "fvlm+np+ct"]


@pytest.mark.slow
def test_ablation_script_runs_all_variants_and_writes_results(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    command = [
        sys.executable,
        str(repo_root / "experiments" / "ablation.py"),
        "--studies",
        "10",
        "--steps",
        "2",
        "--seeds",
        "0",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = json.loads((out / "ablation.json").read_text())
    assert results["steps"] == 2 and results["seeds"] == [0] and results["studies"] == 10
    assert [run["variant"] for run in results["runs"]] == [*VARIANTS, "probe"]  # + the supervised-probe ceiling
    for run in results["runs"]:
        assert run["steps"] == 2 and run["seed"] == 0
        assert run["n_test"] >= 1
        assert run["mean_auc"] is None or 0.0 <= run["mean_auc"] <= 1.0
    assert set(results["summary"]) == {*VARIANTS, "probe"}
    # each variant really trained with its own loss settings
    work = out / "work"
    from core.config import load_config

    clip_train = load_config(work / "params_clip_s0.yaml").train
    coteach_train = load_config(work / "params_fvlm_np_ct_s0.yaml").train
    plain_train = load_config(work / "params_fvlm_s0.yaml").train
    assert clip_train.loss == "clip" and clip_train.steps == 2 and clip_train.batch_size == 2
    assert plain_train.loss == "fvlm" and not plain_train.normal_positives and plain_train.coteaching_alpha == 0.0
    assert coteach_train.loss == "fvlm" and coteach_train.normal_positives and coteach_train.coteaching_alpha == 0.5
    table = (out / "ablation.md").read_text()
    assert "global CLIP" in table and "co-teaching" in table and "--steps 2" in table

    # a second run reuses the prepared cohort instead of rebuilding it
    again = subprocess.run([*command, "--variants", "clip"], cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "reusing cohort" in again.stdout
