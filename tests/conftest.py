"""Shared fixtures: a real server process on loopback with the built-in models."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_process import ServerProcess, start_server


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One server with the built-in models, shared by the tests that only read from it."""
    proc = start_server()
    yield proc
    proc.terminate()


@pytest.fixture(scope="session")
def server_address(server: ServerProcess) -> str:
    """host:port of the shared server."""
    return server.address
