"""benchmarks/parse_reports.py keeps running (tiny sizes; the figures themselves are in the docs)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "parse_reports.py"


def test_parse_reports_benchmark_runs(shared_data: Path, capsys, monkeypatch) -> None:
    if not (shared_data / "ct_clip" / "text_classifier" / "data" / "train.csv").is_file():
        pytest.skip("CT-RATE labelled reports not staged")
    monkeypatch.setenv("FVLM_SHARED_DATA", str(shared_data))
    main = runpy.run_path(str(BENCHMARK))["main"]
    assert main(["--reports", "200", "--rounds", "1", "--command-reports", "0"]) == 0
    out = capsys.readouterr().out
    assert "steady state: 200 reports" in out and "distinct: the same 200 reports" in out
    assert "cold first pass: the 800 reports once" in out
    assert out.count("ratio parser / tokenizer") == 3


@pytest.mark.slow
def test_whole_command_section_runs(shared_data: Path, capsys, monkeypatch) -> None:
    """The whole-command rows (a fresh ``fvlm parse-reports`` process each round: slow)."""
    if not (shared_data / "ct_clip" / "text_classifier" / "data" / "train.csv").is_file():
        pytest.skip("CT-RATE labelled reports not staged")
    monkeypatch.setenv("FVLM_SHARED_DATA", str(shared_data))
    main = runpy.run_path(str(BENCHMARK))["main"]
    assert main(["--reports", "100", "--rounds", "1", "--command-reports", "120"]) == 0
    out = capsys.readouterr().out
    assert "whole command: 120 held-out-style reports" in out and out.count("ratio command / peer") == 2
    assert "planted names left in the studies table: 0 of 30 plants" in out
