"""DVC metrics files hold numbers only; identifiers and reasons go beside them (core/metrics_files.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.metrics_files import info_path, numeric, read_metrics_and_info, write_metrics


def test_numbers_in_the_metrics_file_identifiers_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "eval.json"
    written = write_metrics(path, {"mean_auc": 0.7, "promoted": True, "ci": {"low": math.nan}}, {"run_id": "r1"})
    assert written == info_path(path) == tmp_path / "metrics" / "eval.info.json"
    assert json.loads(path.read_text()) == {"ci": {"low": None}, "mean_auc": 0.7, "promoted": 1}
    assert read_metrics_and_info(path) == {"ci": {"low": None}, "mean_auc": 0.7, "promoted": 1, "run_id": "r1"}
    assert read_metrics_and_info(tmp_path / "absent.json") == {}


def test_a_string_in_a_metrics_file_is_refused_naming_the_key() -> None:
    with pytest.raises(TypeError, match="'per_label.A'"):
        numeric({"per_label": {"A": "0.7"}})
