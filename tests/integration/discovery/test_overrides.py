"""An operator's change to a backend discovery owns is an override that discovery keeps until cleared
(issues 17.3 and 19): the discovery service, the admin API and the CLI, on one real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.admin_cli import AdminClient, backend_path
from shared.cli import main
from shared.store import Store
from tests.fakes.docker_api import FakeDockerEngine
from tests.helpers import eventually
from tests.integration.admin.server import ServedAdmin, admin_config
from tests.integration.discovery.test_service import service, write_config

# The in-process server logs with structlog (stdout by default): kept out of the CLI's stdout.
pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")


@pytest.fixture
def admin(redis_url: str, namespace: str) -> Iterator[ServedAdmin]:
    with ServedAdmin(admin_config(redis_url, namespace)) as served:
        yield served


async def api(admin: ServedAdmin, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    client = AdminClient(admin.url)
    try:
        return await asyncio.to_thread(client.call, method, path, body)
    finally:
        client.close()


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def weights(store: Store) -> Any:
    async def read() -> dict[str, tuple[int, Any, Any]]:
        return {
            v.address: (v.backend.weight, v.backend.override, v.backend.discovered) for v in await store.list_backends()
        }

    return read


async def test_static_weight_override_survives_reconciles_and_clearing_restores_the_file(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, admin: ServedAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gobalancer.yaml"
    body = "backends:\n  - {{address: '10.0.0.1:80', weight: {a}}}\n  - {{address: '10.0.0.2:80', weight: {b}}}\n"
    write_config(path, redis_url, namespace, body.format(a=1, b=1))
    read = weights(store)
    async with service(path):
        await eventually(lambda: _eq(read, {"10.0.0.1:80": (1, None, None), "10.0.0.2:80": (1, None, None)}))
        # The operator's weight (the CLI, as in the issue): answered, shown as an override.
        out = await cli(capsys, "backends", "weight", "10.0.0.1:80", "3", "--url", admin.url)
        assert "weight=3 (source 1)" in out
        shown = await api(admin, "GET", backend_path("10.0.0.1:80"))
        assert (shown["weight"], shown["override"], shown["discovered"]) == (3, {"weight": 3}, {"weight": 1})
        # A reconcile (the file changed: the other backend's weight) leaves the override in force...
        write_config(path, redis_url, namespace, body.format(a=1, b=2))
        await eventually(lambda: _eq(read, {"10.0.0.1:80": (3, _o(3), _o(1)), "10.0.0.2:80": (2, None, None)}))
        # ...and so does one that changes the overridden backend in the file: the new value is remembered.
        write_config(path, redis_url, namespace, body.format(a=4, b=2))
        await eventually(lambda: _eq(read, {"10.0.0.1:80": (3, _o(3), _o(4)), "10.0.0.2:80": (2, None, None)}))
        listed = await cli(capsys, "backends", "list", "--url", admin.url)
        assert "weight=3 (source 4)" in listed
        # Clearing puts the file's current value back, at once and for good.
        cleared = await api(admin, "DELETE", backend_path("10.0.0.1:80", "override"))
        assert (cleared["weight"], cleared["override"], cleared["discovered"]) == (4, None, None)
        write_config(path, redis_url, namespace, body.format(a=4, b=5))
        await eventually(lambda: _eq(read, {"10.0.0.1:80": (4, None, None), "10.0.0.2:80": (5, None, None)}))
        # Removing it is still refused without force.
        with pytest.raises(Exception, match=r"HTTP 409"):
            await api(admin, "DELETE", backend_path("10.0.0.1:80"))


async def test_docker_label_weight_override_survives_reconciles_and_clearing_restores_the_label(
    tmp_path: Path,
    redis_url: str,
    namespace: str,
    store: Store,
    admin: ServedAdmin,
    engine: FakeDockerEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine.add_container("web1", labels={"lb.enable": "true", "lb.weight": "1"}, networks={"bridge": "172.17.0.2"})
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, f"  type: docker\n  docker:\n    url: {engine.url}\n")
    read = weights(store)
    async with service(path):
        await eventually(lambda: _eq(read, {"172.17.0.2:80": (1, None, None)}))
        changed = await api(admin, "PUT", backend_path("172.17.0.2:80"), {"weight": 3})
        assert (changed["weight"], changed["override"]) == (3, {"weight": 3})
        # A container joining makes discovery reconcile; the override holds through it.
        engine.add_container("web2", labels={"lb.enable": "true", "lb.weight": "2"}, networks={"bridge": "172.17.0.3"})
        await eventually(lambda: _eq(read, {"172.17.0.2:80": (3, _o(3), _o(1)), "172.17.0.3:80": (2, None, None)}))
        # The dashboard's data (GET /backends) shows it as an override.
        listed = {b["address"]: b for b in await api(admin, "GET", "/backends")}
        assert listed["172.17.0.2:80"]["override"] == {"weight": 3}
        assert listed["172.17.0.3:80"]["override"] is None
        await cli(capsys, "backends", "clear-override", "172.17.0.2:80", "--url", admin.url)
        assert (await read())["172.17.0.2:80"] == (1, None, None)
        engine.add_container("web3", labels={"lb.enable": "true"}, networks={"bridge": "172.17.0.4"})
        await eventually(lambda: _has(read, "172.17.0.4:80"), message="web3 added")
        assert (await read())["172.17.0.2:80"] == (1, None, None)


async def test_kubernetes_drain_override_holds_against_readiness(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, admin: ServedAdmin
) -> None:
    from tests.fakes.k8s_api import FakeKubernetesAPI, endpoint

    with FakeKubernetesAPI() as k8s:
        k8s.apply("web-a", [endpoint("10.1.0.1"), endpoint("10.1.0.2")])
        path = tmp_path / "gobalancer.yaml"
        write_config(
            path, redis_url, namespace, f"  type: kubernetes\n  kubernetes:\n    service: web\n    api_url: {k8s.url}\n"
        )

        async def states() -> dict[str, str]:
            return {v.address: v.backend.state for v in await store.list_backends()}

        async with service(path):
            await eventually(lambda: _eq(states, {"10.1.0.1:8080": "enabled", "10.1.0.2:8080": "enabled"}))
            await api(admin, "POST", backend_path("10.1.0.1:8080", "drain"))
            # Readiness changes elsewhere make discovery reconcile: the operator's drain stays.
            k8s.apply(
                "web-a", [endpoint("10.1.0.1"), endpoint("10.1.0.2", ready=False, serving=True, terminating=True)]
            )
            await eventually(lambda: _eq(states, {"10.1.0.1:8080": "draining", "10.1.0.2:8080": "draining"}))
            shown = await api(admin, "GET", backend_path("10.1.0.1:8080"))
            assert (shown["override"], shown["discovered"]) == ({"state": "draining"}, {"state": "enabled"})
            await api(admin, "DELETE", backend_path("10.1.0.1:8080", "override"))
            assert (await states())["10.1.0.1:8080"] == "enabled"


def _o(weight: int) -> Any:
    from shared.models import BackendOverride

    return BackendOverride(weight=weight)


async def _eq(read: Any, want: Any) -> bool:
    return bool(await read() == want)


async def _has(read: Any, address: str) -> bool:
    return address in await read()
