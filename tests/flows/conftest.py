"""Flows run against ONE session-scoped Prefect test harness (temporary SQLite API server)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a free TCP port on 127.0.0.1 (call it once per port needed)."""
    return _free_port


@pytest.fixture(scope="session")
def make_dvc_project() -> Callable[..., Path]:
    """``make_dvc_project(root, with_remote=True)``: a tiny real DVC project (tests/flows/dvc_project.py)."""
    from tests.flows.dvc_project import make_dvc_project as factory

    return factory
