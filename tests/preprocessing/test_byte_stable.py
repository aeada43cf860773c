"""Byte-stable stage outputs: what convert, segment, parse-reports and shard write (their DVC outputs) depends on
the data and the config only -- not on the clone's location, the time or a rerun (docs/architecture.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, studies=2, seed=0, size="demo", workers=1)
    return root


def run_stages(cohort: Path, work: Path, *, force: bool = False) -> None:
    from preprocessing.convert import run_convert
    from preprocessing.shards import run_shard
    from report_parsing.tables import run_parse_reports
    from segmentation.stage import run_segment
    from tests.flows.stage_chain import convert_job, parse_job, segment_job, shard_job

    run_convert(convert_job(cohort / "dicom", work / "converted"))
    run_segment(segment_job(work / "converted", work / "segmented", cohort / "masks", qc=True, force=force))
    run_parse_reports(parse_job(cohort / "reports.csv", work / "reports" / "reports.parquet"))
    run_shard(shard_job(work / "converted", work / "segmented", work / "reports" / "reports.parquet", work / "shards"))


def output_hashes(work: Path) -> dict[str, str]:
    """sha256 of every file of the four stage outputs (what DVC would hash), by relative path."""
    return {
        str(path.relative_to(work)): hashlib.sha256(path.read_bytes()).hexdigest()
        for stage in ("converted", "segmented", "reports", "shards")
        for path in sorted((work / stage).rglob("*"))
        if path.is_file()
    }


def test_two_copies_at_different_paths_and_a_forced_rerun_write_identical_outputs(cohort: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "elsewhere" / "deeper" / "b"
    run_stages(cohort, first)
    reference = output_hashes(first)
    assert any(name.startswith("shards/train/") for name in reference)
    run_stages(cohort, second)
    assert output_hashes(second) == reference  # another clone location: the same bytes
    run_stages(cohort, first, force=True)  # `fvlm segment --force` on the same volumes
    assert output_hashes(first) == reference  # ... leaves every output, so every later stage, up to date
    for path in (first / "shards").rglob("*"):
        assert not path.name.startswith(".cache") and "file-hashes" not in path.name  # machine caches live outside


def _dvc_env() -> dict[str, str]:
    import os
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in ("FVLM_PARAMS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "FVLM_SALT"):
        env.pop(name, None)
    env["FVLM_NO_FLOWS"] = "1"
    return env


def _sh(command: list[str], cwd: Path) -> str:
    import subprocess

    done = subprocess.run(command, cwd=cwd, env=_dvc_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _out_hashes(repo: Path) -> dict[str, str]:
    import yaml

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        f"{stage}:{out['path']}": out["md5"] for stage, entry in lock["stages"].items() for out in entry.get("outs", [])
    }


@pytest.mark.slow  # two repo copies, `dvc repro shard` in each, a forced re-segmentation (minutes)
def test_dvc_clones_at_two_paths_lock_the_same_outputs_and_segment_force_keeps_shard_up_to_date(
    tmp_path: Path, copy_repo
) -> None:
    import subprocess

    import yaml

    repos = []
    for name in ("a", "somewhere/else/b"):
        repo = copy_repo(tmp_path / name)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["demo_data"].update(studies=4, workers=1)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _sh(["fvlm", "demo-data"], repo)
        _sh(["dvc", "repro", "-q", "shard"], repo)
        repos.append(repo)
    first, second = (_out_hashes(repo) for repo in repos)
    assert first == second and any(key.startswith("shard:") for key in first)
    _sh(["fvlm", "segment", "--force"], repos[0])
    status = _sh(["dvc", "status", "shard"], repos[0])
    assert "changed" not in status, status  # the re-segmented masks are the same bytes: nothing to redo
