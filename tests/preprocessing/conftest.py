"""Fixtures shared by the preprocessing tests (helpers in the plain modules cohort_factory.py, convert_job.py)."""

from __future__ import annotations

import pytest

from tests.preprocessing import cohort_factory, convert_job


@pytest.fixture(scope="session")
def anatomies() -> tuple[str, ...]:
    """The ctrate4 anatomies of the tiny cohort that ``make_cohort`` (tests/conftest.py) writes."""
    return cohort_factory.ANATOMIES


@pytest.fixture(scope="session")
def convert_dir():
    """``convert_dir(input_dir, output_dir, **kwargs)``: run_convert with ConvertJob / ConvertSettings keywords."""
    return convert_job.convert_dir
