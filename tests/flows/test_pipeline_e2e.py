"""`fvlm pipeline` on the real dvc.yaml (demo cohort, through `shard`) in copies of this repository:
kill -9 at a random point then a rerun gives the same shards as an uninterrupted run; a rerun with
nothing new runs no stage."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _demo_project(copy_repo: Callable[[Path], Path], target: Path) -> Path:
    copy_repo(target)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    params_path = target / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["demo_data"]["studies"] = 4
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    # the raw dataset is data the user owns (no stage writes it): generate the demo cohort and `dvc add` it
    for command in (["-m", "fvlm.cli", "demo-data", "data/demo"], ["-m", "dvc", "add", "-q", "data/demo"]):
        subprocess.run([sys.executable, *command], cwd=target, check=True, capture_output=True, timeout=900)
    return target


def _env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    for name in ("FVLM_PARAMS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env


def _pipeline(repo: Path) -> list[str]:
    return [sys.executable, "-m", "fvlm.cli", "pipeline", "--no-pull", "--no-push", "shard"]


def _shard_hash(repo: Path) -> str:
    return json.loads((repo / "metrics" / "shard.info.json").read_text())["content_hash"]


def test_kill_9_then_rerun_gives_the_same_shards_and_a_noop_rerun_runs_nothing(
    tmp_path: Path, copy_repo: Callable[[Path], Path]
) -> None:
    env = _env()
    reference = _demo_project(copy_repo, tmp_path / "reference")
    started = time.monotonic()
    done = subprocess.run(_pipeline(reference), cwd=reference, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reference_seconds = time.monotonic() - started

    again = subprocess.run(_pipeline(reference), cwd=reference, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert "Running stage" not in again.stdout + again.stderr, "a rerun with nothing new ran a stage"

    victim = _demo_project(copy_repo, tmp_path / "victim")
    run = subprocess.Popen(
        _pipeline(victim),
        cwd=victim,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        delay = random.Random(os.environ.get("FVLM_KILL_SEED", "0")).uniform(5.0, reference_seconds * 0.8)
        time.sleep(delay)
        assert run.poll() is None, "the pipeline ended before the kill point"
        run.send_signal(signal.SIGKILL)
        run.wait()
        time.sleep(2)  # the supervisor takes dvc and the running stage command down
        rerun = subprocess.run(_pipeline(victim), cwd=victim, env=env, capture_output=True, text=True, timeout=1200)
        assert rerun.returncode == 0, f"killed after {delay:.1f} s:\n" + rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert _shard_hash(victim) == _shard_hash(reference), f"killed after {delay:.1f} s"
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)  # what is left of the killed run's own session
        except ProcessLookupError:
            pass
