"""The synthetic samples (tests/training/samples.py, via the conftest fixtures) match the batch contract."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def test_synthetic_sample_matches_contract(
    make_samples: Callable, crop_zyx: tuple[int, int, int], anatomies: tuple[str, ...]
) -> None:
    sample = make_samples(1)[0]
    assert sample["volume"].shape == (1, *crop_zyx)
    assert sample["mask"].shape == crop_zyx
    assert set(np.unique(sample["mask"])) == {0, 1, 2, 3, 4}
    assert len(sample["anatomy_text"]) == len(anatomies)
