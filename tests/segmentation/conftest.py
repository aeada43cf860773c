"""Fixtures for the segmentation tests: stand-in TotalSegmentator weights, small synthetic CTs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# TotalSegmentator `total` ids used by the synthetic phantoms
LUNG_UPPER_LEFT, LUNG_LOWER_LEFT, LUNG_UPPER_RIGHT = 10, 11, 12
HEART, AORTA, ESOPHAGUS, LIVER = 51, 52, 15, 5


def phantom(shape_xyz: tuple[int, int, int] = (48, 40, 24), *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int16 HU, uint8 TotalSegmentator ids) arrays in NIfTI (x, y, z) order: a tiny chest phantom."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_xyz
    hu = np.full(shape_xyz, -1000, dtype=np.int16)
    ids = np.zeros(shape_xyz, dtype=np.uint8)
    hu[4 : nx - 4, 4 : ny - 4, :] = 40
    ids[6 : nx // 2 - 2, 8 : ny - 8, 2 : nz - 2] = LUNG_UPPER_LEFT  # RAS: low x = patient right... values only
    ids[nx // 2 + 2 : nx - 6, 8 : ny - 8, 2 : nz - 2] = LUNG_UPPER_RIGHT
    ids[nx // 2 + 2 : nx - 6, 8 : ny - 8, 0:4] = LUNG_LOWER_LEFT  # touches the first slice
    ids[nx // 2 - 4 : nx // 2 + 4, 10:18, 4:12] = HEART
    ids[nx // 2 - 1 : nx // 2 + 2, ny - 12 : ny - 9, 3 : nz - 3] = AORTA
    hu[ids > 0] = -800
    hu[ids == HEART] = 45
    hu[ids == AORTA] = 200
    hu += rng.integers(-20, 20, size=shape_xyz, dtype=np.int16)
    return hu, ids


@pytest.fixture(scope="session")
def standin_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TOTALSEG_HOME_DIR holding random-weight stand-in models for the `fast` mode (built once)."""
    from core.env import ensure_totalseg_config
    from segmentation.standin_weights import build_standin_weights

    home = tmp_path_factory.mktemp("totalseg_home")
    config_file = ensure_totalseg_config(home)
    build_standin_weights(home / "nnunet" / "results", ("fast",))
    assert config_file.is_file()
    return home


@pytest.fixture()
def totalseg_env(standin_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TotalSegmentator env pointing at the stand-in home; restored after the test."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(standin_home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(standin_home / "nnunet" / "results"))
    return standin_home


@pytest.fixture(scope="session")
def make_phantom():
    """The :func:`phantom` factory (tests take it as a fixture rather than importing conftest)."""
    return phantom
