"""Fixtures of the report-parsing tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ctrate_texts(shared_data: Path) -> list[str]:
    """The 800 real CT-RATE report texts of ../shared (skips when they are not staged)."""
    import pandas as pd

    path = shared_data / "ct_clip" / "text_classifier" / "data" / "train.csv"
    if not path.is_file():
        pytest.skip(f"{path} not staged")
    return pd.read_csv(path)["report_text"].astype(str).tolist()
