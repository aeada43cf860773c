"""core/progress.py: a rich bar on a terminal, plain periodic lines with count / total / rate / ETA elsewhere."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time

import pytest

from core import progress as progress_module
from core.progress import Progress, format_duration, progress, progress_mode


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FVLM_PROGRESS", raising=False)
    monkeypatch.setattr(progress_module, "_configured", "auto")


def test_plain_lines_carry_count_total_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fvlm.progress")
    with progress(5, "convert", "studies", every_items=2, every_s=None) as bar:
        assert bar.mode == "plain"  # pytest's stderr is no terminal
        for _ in range(5):
            time.sleep(0.01)
            bar.advance()
    lines = [record.getMessage() for record in caplog.records if record.name == "fvlm.progress"]
    assert lines[0].startswith("convert: 2/5 studies (40%), ")
    assert "studies/s" in lines[0] and "ETA 0:00" in lines[0] and "elapsed 0:00" in lines[0]
    assert lines[1].startswith("convert: 4/5 studies (80%)")
    assert lines[-1].startswith("convert: 5/5 studies in 0:00 (") and lines[-1].endswith("studies/s)")
    assert len(lines) == 3  # 2, 4, closing line (the 5/5 tick is the closing line, not a periodic one)


def test_plain_lines_are_periodic_in_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fvlm.progress")
    with progress(None, "train", "steps", every_s=0.05, closing_line=False) as bar:
        bar.advance(loss=0.5)
        time.sleep(0.06)
        bar.advance(loss=0.25)
        bar.advance(loss=0.125)  # within 0.05 s of the last line: no new line
    lines = [record.getMessage() for record in caplog.records if record.name == "fvlm.progress"]
    assert lines == [lines[0]] and lines[0].startswith("train: 2 steps, ")
    assert "ETA ?" in lines[0] and lines[0].endswith("loss 0.25")


def test_iterating_counts_items_and_reports_rate_and_eta() -> None:
    bar: Progress[int] = progress(range(4), "parse-reports", "reports", every_s=None)
    seen = list(bar)
    assert seen == [0, 1, 2, 3] and bar.count == 4 and bar.total == 4
    assert bar.rate > 0 and bar.eta == 0.0


def test_resumed_count_rate_counts_only_this_run() -> None:
    bar: Progress[object] = progress(100, "train", "steps", start=90, every_s=None)
    time.sleep(0.01)
    bar.update(95)
    assert 0 < bar.rate < 5 / 0.01 + 1 and bar.eta is not None and bar.eta > 0
    assert bar.line().startswith("train: 95/100 steps (95%)")
    bar.close()


def test_off_mode_and_disabled_progress_log_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    progress_module.configure_progress("off")
    with progress(3, "shard", "studies", every_items=1) as bar:
        bar.advance(3)
    progress_module.configure_progress("plain")
    with progress(3, "shard", "studies", every_items=1, enabled=False) as bar:
        bar.advance(3)
    assert not [r for r in caplog.records if r.name == "fvlm.progress"]


def test_environment_overrides_the_configured_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    progress_module.configure_progress("off")
    monkeypatch.setenv("FVLM_PROGRESS", "plain")
    assert progress_mode() == "plain"
    monkeypatch.setenv("FVLM_PROGRESS", "nonsense")
    assert progress_mode() == "off"
    with pytest.raises(ValueError):
        progress_module.configure_progress("loud")  # type: ignore[arg-type]


def test_terminal_gets_a_rich_bar_and_no_log_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fvlm.progress")
    terminal = FakeTerminal()
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "140")
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress_mode() == "bar"
    with progress(6, "segment", "studies", every_items=1) as outer, progress(3, "evaluate: val", "batches") as inner:
        for _ in range(6):
            outer.advance()
        inner.advance(3)
    drawn = terminal.getvalue()
    assert "segment" in drawn and "6/6" in drawn and "studies" in drawn and "━" in drawn
    assert "evaluate: val" in drawn and "3/3" in drawn  # the nested bar shares the one display
    assert not [r for r in caplog.records if r.name == "fvlm.progress"]
    assert progress_module._BARS._display is None  # the display is stopped with its last bar


def test_format_duration() -> None:
    assert format_duration(7) == "0:07"
    assert format_duration(723) == "12:03"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(float("inf")) == "?"


def test_import_is_cheap_and_does_not_need_rich(repo_root) -> None:
    code = "import sys, core.progress; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
