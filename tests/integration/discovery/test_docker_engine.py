"""The Docker source against a real Docker engine, when one is reachable (``docker info`` works).

Skipped otherwise: these machines run no engine by default and this test never starts one. It
also needs a local image (nothing is ever pulled): ``GOBALANCER_TEST_DOCKER_IMAGE``, else the
test Redis image ``GOBALANCER_TEST_REDIS_IMAGE`` (default ``gobalancer-redis:local``), whose
default command keeps running.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from services.discovery.sources.docker import DockerSource
from shared.config import DockerDiscoveryConfig, Seconds
from tests.conftest import docker_reachable, unavailable
from tests.helpers import eventually
from tests.integration.discovery.helpers import addresses, running

pytestmark = pytest.mark.docker

LABEL = "gobalancer.test.discovery"


@pytest.fixture
def engine() -> Iterator[tuple[Any, str]]:
    """A client of the reachable engine and a local image to run."""
    if not docker_reachable():
        unavailable("no Docker engine reachable (docker info fails); the unix-socket API server variant always runs")
    import docker

    c = docker.from_env(timeout=20)
    image = os.environ.get("GOBALANCER_TEST_DOCKER_IMAGE") or os.environ.get(
        "GOBALANCER_TEST_REDIS_IMAGE", "gobalancer-redis:local"
    )
    try:
        c.images.get(image)
    except docker.errors.ImageNotFound:
        c.close()
        unavailable(f"image {image} is not present locally (nothing is pulled)")
    try:
        yield c, image
    finally:
        for container in c.containers.list(all=True, filters={"label": LABEL}):
            container.remove(force=True)
        c.close()


def _ip(container: Any) -> str:
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    return str(networks[sorted(networks)[0]]["IPAddress"])


async def test_real_engine_start_pause_stop(engine: tuple[Any, str]) -> None:
    client, image = engine
    labels = {LABEL: "1", "lb.enable": "true", "lb.port": "6379", "lb.weight": "2"}
    bad = {LABEL: "1", "lb.enable": "true", "lb.weight": "x"}
    src = DockerSource(DockerDiscoveryConfig(resync_sec=Seconds(60)))
    async with running(src) as desired:
        await eventually(lambda: desired.value is not None, timeout=10)
        c = client.containers.run(image, detach=True, labels=labels)
        client.containers.run(image, detach=True, labels=bad)
        address = f"{_ip(c)}:6379"

        # Other labelled containers may run on a shared engine: look only at ours.
        def ours() -> set[str]:
            return (addresses(desired) or set()) & {address}

        await eventually(lambda: ours() == {address}, timeout=10, message="started container added")
        assert desired.value is not None and desired.value[address].weight == 2
        c.pause()
        await eventually(lambda: ours() == set(), timeout=10, message="paused removed")
        c.unpause()
        await eventually(lambda: ours() == {address}, timeout=10, message="unpaused back")
        c.stop(timeout=1)
        await eventually(lambda: ours() == set(), timeout=15, message="stopped removed")


async def test_real_engine_pool_and_route_labels(engine: tuple[Any, str]) -> None:
    """``lb.pool`` / ``lb.host`` / ``lb.path_prefix`` read from real containers: the backend's pool, and the
    pool's ``docker-<pool>`` route while a container asks for it (the stack's own containers may be labelled
    too on a shared engine: only this test's pools are looked at)."""
    client, image = engine
    pool = f"t{os.getpid()}"
    labels = {LABEL: "1", "lb.enable": "true", "lb.port": "6379", "lb.pool": pool, "lb.host": f"{pool}.localhost"}
    src = DockerSource(DockerDiscoveryConfig(resync_sec=Seconds(60)))
    async with running(src) as desired:
        await eventually(lambda: desired.value is not None, timeout=10)
        c = client.containers.run(image, detach=True, labels={**labels, "lb.path_prefix": "/v1"})
        address = f"{_ip(c)}:6379"

        def route() -> tuple[str, str] | None:
            routes = desired.settings.routes if desired.settings is not None else None
            mine = [(r.host, r.path_prefix) for r in routes or () if r.name == f"docker-{pool}" and r.pool == pool]
            return mine[0] if mine else None

        await eventually(lambda: route() == (f"{pool}.localhost", "/v1"), timeout=10, message="route of the pool")
        assert desired.value is not None and desired.value[address].pool == pool
        assert desired.settings is not None and pool in desired.settings.pools
        c.stop(timeout=1)
        await eventually(lambda: route() is None and address not in (desired.value or {}), timeout=15)
        assert desired.settings is not None and pool not in desired.settings.pools
