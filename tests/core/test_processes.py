"""core.processes: start-up waits that scale with the machine's load, and no helper process left behind."""

from __future__ import annotations

import pytest

from core import processes


@pytest.fixture
def busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load average 10 on 2 CPUs (the issue's machine)."""
    monkeypatch.setattr(processes.os, "getloadavg", lambda: (10.0, 9.0, 8.0), raising=False)
    monkeypatch.setattr(processes, "cpu_count", lambda: 2)


def test_waits_scale_with_the_load(busy_machine: None) -> None:
    assert processes.load_factor() == 5.0
    assert processes.scaled_timeout(120) == 600
    deadline = processes.LoadScaledDeadline(120)
    assert not deadline.passed()
    assert deadline.limit_s == 600
    assert "120 s x load 5.0 on 2 CPUs" in deadline.describe()


def test_an_idle_machine_keeps_the_base_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes.os, "getloadavg", lambda: (0.1, 0.1, 0.1), raising=False)
    assert processes.load_factor() == 1.0
    assert processes.LoadScaledDeadline(120).describe() == "120 s"


def test_a_runaway_load_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes.os, "getloadavg", lambda: (500.0, 1.0, 1.0), raising=False)
    assert processes.load_factor() == processes.MAX_LOAD_FACTOR


def test_prefects_ephemeral_server_wait_scales_unless_chosen(busy_machine: None) -> None:
    environ: dict[str, str] = {processes.EPHEMERAL_STARTUP_VARIABLE: "120"}  # core.env's default
    processes.scale_ephemeral_startup_timeout(environ)
    assert environ[processes.EPHEMERAL_STARTUP_VARIABLE] == "600"
    chosen = {processes.EPHEMERAL_STARTUP_VARIABLE: "45"}
    processes.scale_ephemeral_startup_timeout(chosen)
    assert chosen[processes.EPHEMERAL_STARTUP_VARIABLE] == "45"


def test_stopping_helpers_that_never_started_is_harmless() -> None:
    processes.stop_multiprocessing_helpers()
    processes.stop_multiprocessing_helpers()
