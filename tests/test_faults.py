"""Faults: ``kill -9`` at a random moment of a stage command, then the same command again.

For each stage, over ``FAULT_TRIALS`` trials (default 10) with kill times drawn uniformly over the
uninterrupted run's wall time (the seed is printed; ``FVLM_FAULT_SEED`` replays a run):

* no partial output is visible after the kill: every finished file a neighbour would read (manifests,
  volumes, part files) is complete and readable; at most hidden ``.name.tmp-*`` files are left;
* the rerun completes;
* the result equals an uninterrupted run: shards byte-identical, converted volumes voxel-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import layout

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRIALS = int(os.environ.get("FAULT_TRIALS", "10"))
SEED = int(os.environ.get("FVLM_FAULT_SEED", str(int(time.time()))))
STUDIES = 6


def fvlm(project: Path, *args: str, **popen: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FVLM_NO_FLOWS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fvlm.cli", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the cleanup below can reach stray workers
        **popen,  # type: ignore[arg-type]
    )


def run_ok(project: Path, *args: str) -> float:
    started = time.perf_counter()
    process = fvlm(project, *args)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"fvlm {' '.join(args)} failed:\n{output.decode(errors='replace')[-3000:]}"
    return time.perf_counter() - started


def run_killed(project: Path, delay_s: float, *args: str) -> int | None:
    """Start the command, SIGKILL it (the command's process only, as ``kill -9 PID`` does) after
    ``delay_s``; returns its exit code. Its worker processes must die with it (they would otherwise hold
    its output pipe open): a worker still alive a minute later fails the test."""
    process = fvlm(project, *args)
    try:
        process.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"fvlm {' '.join(args)}: worker processes outlived the killed command (kill after {delay_s:.2f} s)")
    return process.returncode


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with the repo's params.yaml and a small synthetic cohort in data/demo."""
    root = tmp_path_factory.mktemp("faults")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    run_ok(root, "demo-data", "data/demo", "--studies", str(STUDIES), "--seed", "5")
    print(f"fault-injection seed: {SEED} (FVLM_FAULT_SEED={SEED} replays it)")
    return root


def visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".tmp-" not in p.name)


def volume_digest(path: Path) -> str:
    import nibabel as nib
    import numpy as np

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)  # reads (and so checks) every byte of a possibly gzipped file
    return hashlib.sha256(data.tobytes() + np.asarray(image.affine).tobytes()).hexdigest()


def converted_state(folder: Path) -> dict[str, object]:
    """Everything a neighbour reads from convert's output, read completely (fails on a partial file)."""
    import pyarrow.parquet as pq

    state: dict[str, object] = {}
    manifest = layout.converted_manifest(folder)
    if manifest.exists():
        rows = pq.read_table(manifest).to_pylist()
        for row in rows:
            if row["status"] == "ok":
                volume = layout.resolve_volume(folder, row["study_id"], row.get("volume_path"))
                assert volume is not None and volume.is_file(), f"manifest names a missing volume: {row}"
        state["rows"] = sorted((r["study_id"], r["status"], r["reason"], r.get("source_hash")) for r in rows)
    volumes = folder / layout.VOLUMES_DIR
    if volumes.is_dir():
        state["volumes"] = {p.name: volume_digest(p) for p in visible_files(volumes)}
    return state


def shard_state(folder: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    state = {}
    for path in visible_files(folder):
        relative = str(path.relative_to(folder))
        if relative.startswith(layout.SHARD_CACHE_DIR):
            continue
        if path.suffix == ".parquet":
            pq.read_table(path)  # complete and readable
        elif path.suffix == ".json":
            json.loads(path.read_text())
        state[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def kill_times(reference_s: float, trials: int, salt: str) -> list[float]:
    rng = random.Random(f"{SEED}-{salt}")
    return [rng.uniform(0.05, 1.0) * reference_s for _ in range(trials)]


def test_convert_survives_kill_9(project: Path) -> None:
    reference = project / "ref-converted"
    wall = run_ok(project, "convert", "data/demo/dicom", str(reference))
    expected = converted_state(reference)
    assert len(expected["rows"]) == STUDIES  # type: ignore[arg-type]
    for trial, delay in enumerate(kill_times(wall, TRIALS, "convert")):
        out = project / f"converted-{trial}"
        run_killed(project, delay, "convert", "data/demo/dicom", str(out))
        converted_state(out)  # whatever is visible after the kill is complete
        run_ok(project, "convert", "data/demo/dicom", str(out))
        assert converted_state(out) == expected, f"trial {trial} (kill after {delay:.2f} s, seed {SEED})"
        shutil.rmtree(out)


def test_shard_survives_kill_9(project: Path) -> None:
    run_ok(project, "convert")
    run_ok(project, "segment")
    run_ok(project, "parse-reports", "data/demo/reports.csv", "data/reports/reports.parquet")
    reference = project / "ref-shards"
    wall = run_ok(project, "shard", "--out", str(reference), "--metrics", str(project / "ref-shard.json"))
    expected = shard_state(reference)
    assert any(name.endswith(".parquet") for name in expected)
    for trial, delay in enumerate(kill_times(wall, TRIALS, "shard")):
        out = project / f"shards-{trial}"
        metrics = project / f"shard-{trial}.json"
        run_killed(project, delay, "shard", "--out", str(out), "--metrics", str(metrics))
        if out.exists():
            shard_state(out)
        run_ok(project, "shard", "--out", str(out), "--metrics", str(metrics))
        assert shard_state(out) == expected, f"trial {trial} (kill after {delay:.2f} s, seed {SEED})"
        shutil.rmtree(out)


def mlflow_runs(project: Path, owner: Path) -> list[tuple[str, str]]:
    """(run id, status) of every training run that wrote ``owner``."""
    import mlflow

    from core.config import load_config
    from training.tracking.runs import OWNER_TAG, tracking_uri_for

    config = load_config(project / "params.yaml")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri_for(config.root, config.tracking.mlflow_tracking_uri))
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{OWNER_TAG}` = '{owner.resolve()}'")
    return sorted((run.info.run_id, run.info.status) for run in runs)


def test_train_survives_kill_9(project: Path) -> None:
    """A killed training run resumes into the same MLflow run (when a checkpoint exists) and no run is
    left RUNNING: the next start marks an abandoned one FAILED."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params.setdefault("train", {}).update(checkpoint_every=2, batch_size=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (project / "data" / "shards").is_dir():
        run_ok(project, "convert")
        run_ok(project, "segment")
        run_ok(project, "parse-reports", "data/demo/reports.csv", "data/reports/reports.parquet")
        run_ok(project, "shard")
    steps = "6"
    wall = run_ok(project, "train", "--steps", steps, "--out", "ref-model", "--metrics", "ref-train.json")
    assert json.loads((project / "ref-train.json").read_text())["steps"] == int(steps)
    for trial, delay in enumerate(kill_times(wall, TRIALS, "train")):
        out = project / f"model-{trial}"
        metrics = project / f"train-{trial}.json"
        run_killed(project, delay, "train", "--steps", steps, "--out", str(out), "--metrics", str(metrics))
        checkpoint = out / "checkpoints" / "last.pt"
        killed_runs = mlflow_runs(project, out)
        resumable = checkpoint.is_file()
        if resumable:
            import torch

            torch.load(checkpoint, map_location="cpu", weights_only=False)  # complete, loadable
        run_ok(project, "train", "--steps", steps, "--resume", "--out", str(out), "--metrics", str(metrics))
        summary = json.loads(metrics.read_text())
        runs = mlflow_runs(project, out)
        where = f"trial {trial} (kill after {delay:.2f} s, seed {SEED})"
        assert summary["steps"] == int(steps), where
        assert all(status != "RUNNING" for _, status in runs), f"{where}: a run is left RUNNING: {runs}"
        assert sum(status == "FINISHED" for _, status in runs) == 1, f"{where}: {runs}"
        if resumable and killed_runs:
            assert [run_id for run_id, _ in runs] == [run_id for run_id, _ in killed_runs], (
                f"{where}: the resumed training did not continue its MLflow run"
            )
        shutil.rmtree(out)
