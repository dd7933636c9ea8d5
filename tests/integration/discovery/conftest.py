from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.docker_api import FakeDockerEngine, short_socket_path


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[FakeDockerEngine]:
    """A Docker Engine API test server on a unix socket (test_docker_engine.py has its own, real one)."""
    e = FakeDockerEngine(short_socket_path(tmp_path)).start()
    try:
        yield e
    finally:
        e.stop()
