"""The discovery service's ``run`` in-process, against a real Redis: static file watch, Docker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from structlog.testing import capture_logs

from services.discovery.main import run
from shared.config import load_config
from shared.models import Backend
from shared.store import Store
from tests.fakes.docker_api import FakeDockerEngine
from tests.helpers import eventually
from tests.integration.discovery.helpers import backends, equals


def write_config(path: Path, redis_url: str, namespace: str, body: str) -> None:
    path.write_text(
        f"redis:\n  url: {redis_url}\n  namespace: {namespace}\n"
        "discovery:\n  lease_ttl_sec: 1\n  file_poll_sec: 0.05\n" + body,
        encoding="utf-8",
    )


@contextlib.asynccontextmanager
async def service(path: Path) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(load_config(path), stop, str(path)))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


STATIC = "backends:\n  - {address: '10.0.0.1:80', weight: 2}\n  - {address: '10.0.0.2:80'}\n"


async def test_static_file_changes_apply_live_and_invalid_files_are_refused(
    tmp_path: Path, redis_url: str, namespace: str, store: Store
) -> None:
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, STATIC)
    with capture_logs() as logs:
        async with service(path):
            await eventually(
                equals(store, {"10.0.0.1:80": (2, "static", "enabled"), "10.0.0.2:80": (1, "static", "enabled")}),
                message="static backends written",
            )
            # Added through the admin API: survives every reconcile.
            await store.create_backend(Backend(address="10.0.0.9:80", origin="api"))
            # A live change: weight, one removed, one added.
            write_config(
                path,
                redis_url,
                namespace,
                "backends:\n  - {address: '10.0.0.1:80', weight: 5}\n  - {address: '10.0.0.3:80'}\n",
            )
            want = {
                "10.0.0.1:80": (5, "static", "enabled"),
                "10.0.0.3:80": (1, "static", "enabled"),
                "10.0.0.9:80": (1, "api", "enabled"),
            }
            await eventually(equals(store, want), message="change applied live")
            version = await store.version()
            # An invalid file is refused with a one-line error; the running set is kept.
            write_config(path, redis_url, namespace, "backends:\n  - {address: '10.0.0.1:80', weight: 0}\n")
            refused = await eventually(
                lambda: [e for e in logs if e["event"].startswith("config change refused")], message="refused"
            )
            assert "backends[0].weight" in refused[0]["error"] and "\n" not in refused[0]["error"]
            path.write_text("backends: [unclosed\n", encoding="utf-8")
            await eventually(lambda: len([e for e in logs if e["event"].startswith("config change refused")]) == 2)
            assert await backends(store) == want and await store.version() == version
            # And a valid file again is applied.
            write_config(path, redis_url, namespace, "backends:\n  - {address: '10.0.0.4:80'}\n")
            await eventually(
                equals(store, {"10.0.0.4:80": (1, "static", "enabled"), "10.0.0.9:80": (1, "api", "enabled")}),
                message="valid again",
            )


async def test_api_backend_on_a_static_address_is_left_alone(
    tmp_path: Path, redis_url: str, namespace: str, store: Store
) -> None:
    await store.create_backend(Backend(address="10.0.0.2:80", weight=7, origin="api"))
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, STATIC)
    with capture_logs() as logs:
        async with service(path):
            await eventually(
                equals(store, {"10.0.0.1:80": (2, "static", "enabled"), "10.0.0.2:80": (7, "api", "enabled")})
            )
            await eventually(lambda: any(e["event"].startswith("address held by another origin") for e in logs))


async def test_docker_containers_reach_the_store(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, engine: FakeDockerEngine
) -> None:
    await store.create_backend(Backend(address="10.0.0.9:80", origin="api"))
    c1 = engine.add_container("web1", labels={"lb.enable": "true", "lb.weight": "4"}, networks={"bridge": "172.17.0.2"})
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, f"  type: docker\n  docker:\n    url: {engine.url}\n")
    async with service(path):
        await eventually(
            equals(store, {"172.17.0.2:80": (4, "docker", "enabled"), "10.0.0.9:80": (1, "api", "enabled")})
        )
        engine.stop_container(c1)
        await eventually(equals(store, {"10.0.0.9:80": (1, "api", "enabled")}), message="stopped container removed")


async def test_kubernetes_endpoints_reach_the_store_with_draining(
    tmp_path: Path, redis_url: str, namespace: str, store: Store
) -> None:
    from tests.fakes.k8s_api import FakeKubernetesAPI, endpoint

    with FakeKubernetesAPI() as api:
        api.apply("web-a", [endpoint("10.1.0.1"), endpoint("10.1.0.2")])
        path = tmp_path / "gobalancer.yaml"
        body = f"  type: kubernetes\n  kubernetes:\n    service: web\n    api_url: {api.url}\n"
        write_config(path, redis_url, namespace, body)
        async with service(path):
            await eventually(
                equals(
                    store,
                    {"10.1.0.1:8080": (1, "kubernetes", "enabled"), "10.1.0.2:8080": (1, "kubernetes", "enabled")},
                )
            )
            api.apply(
                "web-a", [endpoint("10.1.0.1"), endpoint("10.1.0.2", ready=False, serving=True, terminating=True)]
            )
            await eventually(
                equals(
                    store,
                    {"10.1.0.1:8080": (1, "kubernetes", "enabled"), "10.1.0.2:8080": (1, "kubernetes", "draining")},
                ),
                message="terminating endpoint drained",
            )
            api.apply("web-a", [endpoint("10.1.0.1")])
            await eventually(equals(store, {"10.1.0.1:8080": (1, "kubernetes", "enabled")}), message="removed")
