"""The ingest log: every ``dvc add`` of the ingest leaves its hashes in an append-only, git-tracked file, so a
lost ``.dvc`` file (``git stash`` + ``dvc gc -w``) is restored from it and the studies pulled back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from flows.deployments import dvc_recorder, ingest_log_path, restore_from_ingest_log


def _dvc(project: Path, *args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, check=True, capture_output=True)


def test_ingest_log_survives_a_lost_dvc_file_and_gc(make_dvc_project: Callable[..., Path], tmp_path: Path) -> None:
    project = make_dvc_project(tmp_path / "proj")
    dataset = project / "data" / "raw"
    study = dataset / "dicom" / "study-a"
    study.mkdir(parents=True)
    (study / "1.dcm").write_bytes(b"first study")
    record = dvc_recorder(project, dataset)
    record([study / "1.dcm"])
    log = ingest_log_path(project, dataset)
    assert log == project / "data" / "ingest-log.jsonl"
    (study / "2.dcm").write_bytes(b"second file")
    record([study / "2.dcm"])
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 2  # appended, not rewritten
    dvc_file = dataset.with_name("raw.dvc")
    recorded = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    assert entries[-1]["datasets"]["data/raw.dvc"]["md5"] == recorded
    assert entries[0]["datasets"]["data/raw.dvc"]["md5"] != recorded
    _dvc(project, "push", "-q")
    # what `git stash` + `dvc gc -w` do: the .dvc file is gone, then its data leaves the workspace and cache
    dvc_file.unlink()
    import shutil

    shutil.rmtree(dataset)
    _dvc(project, "gc", "-w", "-f", "-q")
    assert not any((project / ".dvc" / "cache" / "files").rglob("*.dir"))
    # recovery (docs/orchestration.md): the .dvc file from the log, then dvc pull
    assert restore_from_ingest_log(project, log) == [dvc_file]
    _dvc(project, "pull", "-q", "data/raw.dvc")
    assert (study / "1.dcm").read_bytes() == b"first study"
    assert (study / "2.dcm").read_bytes() == b"second file"
