"""Fixtures of the end-to-end tests: a Docker engine and the Compose stack with 2 + 2 proxy replicas."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import unavailable
from tests.e2e.docker_env import E2E_LABEL, SERVICES, Stack, compose_command, engine_problem, wait_for


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    problem = engine_problem()
    if problem is not None:
        unavailable(problem)
    import docker

    client = docker.from_env(timeout=30)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def stack(docker_client: Any) -> Iterator[Stack]:
    """The stack up with 2 + 2 proxy replicas (proxy, proxy-b); torn down (and every stray container removed)
    afterwards."""
    compose = compose_command()
    assert compose is not None
    s = Stack(project=f"gbe2e{uuid.uuid4().hex[:8]}", compose=compose, client=docker_client)
    try:
        s.up()
        expected = sum(SERVICES.values())
        wait_for(
            lambda: len([c for c in s.containers() if c.status == "running"]) == expected,
            timeout=30,
            message=f"{expected} running containers",
        )
        yield s
    finally:
        # Containers a test started on the stack's network first, or `down` cannot remove the network.
        for c in docker_client.containers.list(all=True, filters={"label": f"{E2E_LABEL}={s.project}"}):
            c.remove(force=True)
        s.down()
        s.remove_strays()
