"""Issue 19's "Discovery meets the API" against a real Docker engine and the project's own image.

A container of ``gobalancer:local`` (it exposes 8080 and 8081) labelled without ``lb.port`` is found on
the documented default port, 80; a weight set through the admin API is kept as an operator override
while discovery reconciles, and clearing it restores the label's weight. Skipped without an engine or
the image, except in CI (CI=true), where `make test` provides both.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.admin_cli import AdminClient, backend_path
from shared.store import Store
from tests.conftest import docker_reachable, unavailable
from tests.helpers import eventually
from tests.integration.admin.server import ServedAdmin, admin_config
from tests.integration.discovery.test_service import service, write_config

pytestmark = pytest.mark.docker

LABEL = "gobalancer.test.overrides"
IMAGE = os.environ.get("GOBALANCER_TEST_APP_IMAGE", "gobalancer:local")


@pytest.fixture
def client() -> Iterator[Any]:
    if not docker_reachable():
        unavailable("no Docker engine reachable (docker info fails)")
    import docker

    c = docker.from_env(timeout=20)
    try:
        c.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        c.close()
        unavailable(f"image {IMAGE} is not present locally (nothing is pulled)")
    try:
        yield c
    finally:
        for container in c.containers.list(all=True, filters={"label": LABEL}):
            container.remove(force=True)
        c.close()


def start(client: Any, weight: int) -> str:
    """A labelled container of the project's image (no lb.port); its address on port 80."""
    container = client.containers.run(
        IMAGE,
        command=["python3", "-c", "import time; time.sleep(300)"],
        labels={LABEL: "1", "lb.enable": "true", "lb.weight": str(weight)},
        healthcheck={"test": ["NONE"]},
        detach=True,
    )
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    return f"{networks[sorted(networks)[0]]['IPAddress']}:80"


async def call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    api = AdminClient(url)
    try:
        return await asyncio.to_thread(api.call, method, path, body)
    finally:
        api.close()


async def test_own_image_default_port_and_a_weight_override(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, client: Any
) -> None:
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, "  type: docker\n  docker:\n    resync_sec: 2\n")

    async def weight(address: str) -> int | None:
        view = await store.get_backend(address)
        return view.backend.weight if view is not None else None

    with ServedAdmin(admin_config(redis_url, namespace)) as admin:
        async with service(path):
            first = await asyncio.to_thread(start, client, 1)
            await eventually(lambda: _equals(weight(first), 1), timeout=15, message="found on port 80")
            changed = await call(admin.url, "PUT", backend_path(first), {"weight": 3})
            assert (changed["weight"], changed["override"], changed["discovered"]) == (3, {"weight": 3}, {"weight": 1})
            # Another container joins: discovery reconciles; the operator's weight holds.
            second = await asyncio.to_thread(start, client, 2)
            await eventually(lambda: _equals(weight(second), 2), timeout=15, message="second container found")
            assert await weight(first) == 3
            cleared = await call(admin.url, "DELETE", backend_path(first, "override"))
            assert (cleared["weight"], cleared["override"]) == (1, None)


async def _equals(value: Any, want: Any) -> bool:
    return bool(await value == want)
