"""Shared test fixtures. Tests run offline with telemetry off (core.env)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from core.env import apply_offline_env

apply_offline_env()
# unit tests call the stage libraries directly; flows are tested in tests/flows and end to end in
# tests/test_e2e_dvc.py (whose `fvlm demo` subprocess runs every stage command as its Prefect flow)
os.environ.setdefault("FVLM_NO_FLOWS", "1")
# `fvlm` commands called in-process point PREFECT_HOME at <root>/.fvlm-services/prefect unless it is set
# (core.config.apply_services_environment): one home for the whole session, not a test's tmp dir
if not os.environ.get("PREFECT_HOME"):
    import tempfile

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="fvlm-test-prefect-home-")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FVLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def _script_loader(folder: str) -> Callable[[str], ModuleType]:
    """``load(name)``: the module of ``<folder>/<name>.py`` (benchmarks and experiments are scripts, not packages)."""
    import importlib.util

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"{name}_{folder}", REPO_ROOT / folder / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """``load_benchmark("train_step")``: the module of ``benchmarks/train_step.py``."""
    return _script_loader("benchmarks")


@pytest.fixture(scope="session")
def load_experiment() -> Callable[[str], ModuleType]:
    """``load_experiment("learnability")``: the module of ``experiments/learnability.py``."""
    return _script_loader("experiments")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public test data); tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def make_cohort():
    """Factory (tests/preprocessing/cohort_factory.py): ``make_cohort(root, n_studies=6, ...)`` writes a tiny
    converted + segmented + reports cohort under root and returns its Cohort; shared by the shard writer
    (tests/preprocessing) and the shard reader (tests/training) tests."""
    from tests.preprocessing.cohort_factory import make_cohort

    return make_cohort


# what a copy of the repo for an end-to-end project leaves behind: the venv, git, and every run's outputs
# and stores (a developer's data/, metrics, MLflow / Prefect / DVC state must not leak into the copy)
REPO_COPY_IGNORE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "data",
    "metrics",
    "mlflow.db",
    "mlruns",
    "mlartifacts",
    ".dvc-remote",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
    "tmp",
    "cache",
    ".fvlm-services",
    ".fvlm-cache",  # machine-local caches (core/layout.py)
    ".fvlm-private",  # the developer's identity map: PHI of their own runs, never copied
    "dvc.lock",
)


@pytest.fixture(scope="session")
def copy_repo() -> Callable[[Path], Path]:
    """``copy_repo(target)``: a copy of this repository's sources at ``target`` (no run outputs)."""

    def copy(target: Path) -> Path:
        shutil.copytree(REPO_ROOT, target, ignore=REPO_COPY_IGNORE)
        return target

    return copy


@pytest.fixture(scope="session")
def undeclared_reads() -> Callable[..., dict[str, set[str]]]:
    """``undeclared_reads(access_log_text, dvc_yaml)``: {stage: config keys read but not declared}."""
    from tests.dvc_declarations import undeclared_reads as check

    return check
