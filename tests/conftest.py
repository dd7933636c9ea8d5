"""Fixtures shared by every test: a real Redis, stores on private namespaces, helpers."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from shared.redis_server import RedisServer, find_redis_server
from shared.store import Store


def in_ci() -> bool:
    """Running in CI: ``CI`` set to ``true``, ``1`` or ``yes`` (any case), as CI systems spell it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip a test whose tool or engine is missing locally; in CI that is a failure, never a skip."""
    if in_ci():
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


def docker_reachable() -> bool:
    """True when a Docker engine answers on the configured socket."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def _testcontainers_redis() -> tuple[str, Any] | None:
    """A Redis container from a local image (nothing is ever pulled); None when not possible."""
    image = os.environ.get("GOBALANCER_TEST_REDIS_IMAGE", "gobalancer-redis:local")
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    os.environ.setdefault("TC_HOST", "127.0.0.1")
    try:
        import docker
        from testcontainers.community.redis import RedisContainer  # type: ignore[import-not-found,unused-ignore]

        client = docker.from_env(timeout=5)
        client.images.get(image)
        client.close()
    except Exception:
        return None
    # Bound to the container's own interface: protected mode would refuse the published port.
    container = RedisContainer(image).with_command("redis-server --save '' --appendonly no --protected-mode no")
    try:
        container.start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        return f"redis://{host}:{port}/0", container
    except Exception:
        with contextlib.suppress(Exception):
            container.stop()
        return None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` if set; else testcontainers when a Docker engine is reachable; else a child."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if docker_reachable():
        found = _testcontainers_redis()
        if found is not None:
            url, container = found
            try:
                yield url
            finally:
                container.stop()
            return
    if find_redis_server() is None:
        pytest.fail("redis-server is not installed: run `make test` (it installs it) or apt-get install redis-server")
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(redis_url: str, namespace: str) -> AsyncIterator[Store]:
    s = Store.from_url(redis_url, namespace)
    try:
        yield s
    finally:
        keys = [key async for key in s.redis.scan_iter(match=f"{namespace}:*")]
        if keys:
            await s.redis.delete(*keys)
        await s.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop or restart it."""
    if find_redis_server() is None:
        pytest.fail("redis-server is not installed")
    server = RedisServer(persist=True).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def server_logs_to_stderr() -> Iterator[None]:
    """Structlog to stderr for the test (an in-process server's log lines stay out of a CLI's stdout)."""
    import sys

    import structlog

    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.__stderr__))
    try:
        yield
    finally:
        structlog.configure(**saved)
