"""Both UIs in a headless browser (issue #31): the segment-qc artifact in Prefect's UI links the QC pictures
by http URLs that answer with the PNGs, and MLflow's UI shows them in the segment-qc run
(tests/flows/ui_screenshots.py, which also writes docs/img/prefect_ui.png and docs/img/mlflow_ui.png)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.ui_screenshots import MAX_PNG_BYTES, find_chromium, run_check


@pytest.mark.slow  # two real servers, convert + segment flows on 2 studies, four Chromium page loads: ~45 s idle
def test_qc_pictures_open_from_both_uis(tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium (apt-get install -y chromium, or FVLM_CHROMIUM=/path/to/chrome)")
    check = run_check(tmp_path / "img", tmp_path / "work", chromium=chromium)
    assert len(check.links) == 2 and all(answer.startswith("200 image/png") for answer in check.links.values())
    assert all(link.startswith(check.mlflow_url + "/get-artifact?") for link in check.links)
    assert "file://" not in check.artifact_markdown
    for name in ("prefect_ui.png", "mlflow_ui.png"):
        png = check.screenshots[name]
        assert png.read_bytes().startswith(b"\x89PNG") and 10_000 < png.stat().st_size <= MAX_PNG_BYTES
