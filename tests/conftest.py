"""Shared test fixtures. Tests run offline with telemetry off (core.env)."""

from __future__ import annotations

import os
from pathlib import Path

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
