"""Nothing left behind: a stage command's processes end with it, and a rerun removes a killed run's temporary
files before anything is tracked (issue #28 item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def session_members(session_id: int) -> list[str]:
    """``pid state name`` of every process (zombies included) in the session / process group ``session_id``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        if session_id in (int(fields[2]), int(fields[3])):
            members.append(f"{entry.name} {fields[0]} {name}")
    return members


def run_in_own_session(project: Path, *args: str) -> tuple[int, str, list[str]]:
    """Run ``fvlm <args>`` as the leader of a new session; its exit code, output, and what of it remains."""
    env = {**os.environ, "FVLM_NO_FLOWS": "1", "PREFECT_API_URL": "", "MLFLOW_TRACKING_URI": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "fvlm.cli", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output, _ = process.communicate(timeout=600)
    return process.returncode, output.decode(errors="replace"), session_members(process.pid)


def test_convert_leaves_no_process_and_removes_a_killed_runs_tmp_files(tmp_path: Path) -> None:
    if not Path("/proc/self/stat").exists():
        import pytest

        pytest.skip("needs /proc")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    code, output, _ = run_in_own_session(tmp_path, "demo-data", "data/demo", "--studies", "2", "--seed", "5")
    assert code == 0, output
    volumes = tmp_path / "converted" / "volumes"
    volumes.mkdir(parents=True)
    killed = volumes / ".st_0123456789ab.nii.gz.tmp-k1lled_9.nii.gz"  # what a kill -9 mid-write leaves
    killed.write_bytes(b"")
    # two studies, two workers: the spawn pool and multiprocessing's resource tracker are started
    code, output, remaining = run_in_own_session(tmp_path, "convert", "data/demo/dicom", "converted", "--workers", "2")
    assert code == 0, output
    assert "Traceback" not in output, output  # e.g. from an exit hook in a pool worker
    assert remaining == [], f"processes of `fvlm convert` outlived it: {remaining}"
    assert not killed.exists(), "the rerun kept a killed run's temporary file in a DVC output"
    assert not [p.name for p in volumes.iterdir() if ".tmp-" in p.name]
    assert len(list(volumes.glob("*.nii.gz"))) == 2
