"""Fixtures shared by the training tests: the tiny synthetic cohort and tiny config (tests/training/samples.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.training import samples


@pytest.fixture(scope="session")
def anatomies() -> tuple[str, ...]:
    """The four ctrate4 anatomies of the synthetic samples, in mask order (mask value k+1)."""
    return samples.ANATOMIES


@pytest.fixture(scope="session")
def crop_zyx() -> tuple[int, int, int]:
    """The synthetic samples' crop shape (and the tiny config's grid.crop_zyx)."""
    return samples.CROP_ZYX


@pytest.fixture(scope="session")
def make_samples() -> Callable[..., list[dict]]:
    """Factory: ``make_samples(n, seed=0)`` -> n synthetic samples."""
    return samples.make_samples


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., object]:
    """Factory: ``tiny_config(tmp_path, **overrides)`` -> tiny CPU FvlmConfig rooted at tmp_path."""
    return samples.tiny_config
