"""Pools and routes written by the discovery service (``services.discovery.seeding``), against a real Redis:
the config's pools and routes seeded (and an operator's later change kept across a restart), static backends
of a pool, Docker labels ``lb.pool`` / ``lb.host`` / ``lb.path_prefix``, several Kubernetes Services."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from shared.config import RouteConfig
from shared.models import AlgorithmSetting, PoolSetting, RouteTableSetting
from shared.store import Store
from tests.fakes.docker_api import FakeDockerEngine
from tests.helpers import eventually
from tests.integration.discovery.test_service import service, write_config


async def pools_of(store: Store) -> dict[str, str]:
    """address -> pool, for every backend in the store."""
    return {v.address: v.backend.pool for v in await store.list_backends()}


async def route_table(store: Store) -> tuple[list[tuple[str, str, str, str]], str] | None:
    table = await store.get_routes()
    if table is None:
        return None
    return [(r.name, r.pool, r.host, r.path_prefix) for r in table.routes], table.default_pool


POOLS = """\
backends:
  - {address: '10.0.0.1:80'}
pools:
  web:
    algorithm: least_connections
    backends:
      - {address: '10.0.0.2:80', weight: 3}
  api:
    backends:
      - {address: '10.0.0.3:80'}
routes:
  - {name: web, host: a.example.com, pool: web}
  - {name: api, path_prefix: /api, pool: api}
default_pool: default
"""


async def test_config_pools_and_routes_are_seeded_once_and_an_operators_change_survives_a_restart(
    tmp_path: Path, redis_url: str, namespace: str, store: Store
) -> None:
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, POOLS)
    async with service(path):
        want = {"10.0.0.1:80": "default", "10.0.0.2:80": "web", "10.0.0.3:80": "api"}
        await eventually(lambda: _equal(pools_of(store), want), message="static backends in their pools")
        pools = await store.get_pools()
        assert sorted(pools) == ["api", "web"]
        assert pools["web"].algorithm == AlgorithmSetting(name="least_connections")
        assert pools["web"].health_check is None  # None: the config's pools.web.health_check stays in force
        assert await route_table(store) == (
            [("web", "web", "a.example.com", "/"), ("api", "api", "", "/api")],
            "default",
        )
    # An operator changes pool web and the route table through the store (the admin API's path).
    await store.set_pool(PoolSetting(name="web", algorithm=AlgorithmSetting(name="ewma")), mode="update")
    operators = RouteTableSetting(routes=[RouteConfig(name="only", host="b.example.com", pool="web")])
    await store.set_routes(operators)
    # The file drops pool api (its backend goes, the pool stays) and adds pool extra.
    write_config(
        path,
        redis_url,
        namespace,
        POOLS.replace("  api:\n    backends:\n      - {address: '10.0.0.3:80'}\n", "")
        .replace("  - {name: api, path_prefix: /api, pool: api}\n", "")
        .replace("pools:\n", "pools:\n  extra:\n    algorithm: p2c\n"),
    )
    async with service(path):
        await eventually(lambda: _has_pool(store, "extra"), message="the new pool of the file created")
        await eventually(lambda: _equal(pools_of(store), {"10.0.0.1:80": "default", "10.0.0.2:80": "web"}))
        pools = await store.get_pools()
        assert pools["web"].algorithm.name == "ewma"  # the operator's, not the file's least_connections
        assert "api" in pools  # deleted from the file, not from the store
        assert await route_table(store) == ([("only", "web", "b.example.com", "/")], "")


async def test_a_backend_moved_to_another_pool_in_the_file_moves_live(
    tmp_path: Path, redis_url: str, namespace: str, store: Store
) -> None:
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, "backends:\n  - {address: '10.0.0.5:80'}\n")
    async with service(path):
        await eventually(lambda: _equal(pools_of(store), {"10.0.0.5:80": "default"}))
        assert await store.get_routes() is None  # no routes in the file: nothing written, the config's table holds
        write_config(path, redis_url, namespace, "pools:\n  moved:\n    backends:\n      - {address: '10.0.0.5:80'}\n")
        await eventually(lambda: _equal(pools_of(store), {"10.0.0.5:80": "moved"}), message="moved to pool moved")
        assert "moved" in await store.get_pools()
        assert await store.get_routes() is None


async def test_docker_labels_make_pools_and_discovery_owned_routes_beside_an_operators(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, engine: FakeDockerEngine
) -> None:
    # An operator's route table is in the store already: discovery adds to it and never clobbers it.
    await store.set_routes(RouteTableSetting(routes=[RouteConfig(name="ops", host="ops.example.com", pool="default")]))
    plain = engine.add_container("old", labels={"lb.enable": "true"}, networks={"bridge": "172.17.0.2"})
    web = {"lb.enable": "true", "lb.pool": "web", "lb.host": "a.localhost"}
    web1 = engine.add_container("web1", labels=web, networks={"bridge": "172.17.0.3"})
    api = {"lb.enable": "true", "lb.pool": "api", "lb.host": "b.localhost", "lb.path_prefix": "/v1/"}
    api1 = engine.add_container("api1", labels=api, networks={"bridge": "172.17.0.4"})
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, f"  type: docker\n  docker:\n    url: {engine.url}\n")
    both = (
        [
            ("ops", "default", "ops.example.com", "/"),
            ("docker-api", "api", "b.localhost", "/v1"),
            ("docker-web", "web", "a.localhost", "/"),
        ],
        "",
    )
    with capture_logs() as logs:
        async with service(path):
            want = {"172.17.0.2:80": "default", "172.17.0.3:80": "web", "172.17.0.4:80": "api"}
            await eventually(lambda: _equal(pools_of(store), want), message="labelled containers in their pools")
            await eventually(lambda: _equal(route_table(store), both), message="discovered routes added")
            assert {"api", "web"} <= (await store.get_pools()).keys()
            # A second container of pool web: same route, the table is not rewritten.
            writes = _count(logs, "route table written")
            web2 = engine.add_container("web2", labels=web, networks={"bridge": "172.17.0.5"})
            await eventually(lambda: _equal(pools_of(store), {**want, "172.17.0.5:80": "web"}))
            assert _count(logs, "route table written") == writes
            # Pool web's containers go: its route goes, the operator's and api's stay, the pool record stays.
            engine.stop_container(web1)
            engine.stop_container(web2)
            await eventually(
                lambda: _equal(route_table(store), ([both[0][0], both[0][1]], "")), message="web's route removed"
            )
            assert "web" in await store.get_pools()
            engine.stop_container(api1)
            await eventually(lambda: _equal(route_table(store), ([both[0][0]], "")), message="api's route removed")
            assert await pools_of(store) == {"172.17.0.2:80": "default"}
    engine.stop_container(plain)


async def test_docker_routes_on_an_empty_store_keep_unrouted_requests_on_the_default_pool(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, engine: FakeDockerEngine
) -> None:
    engine.add_container(
        "web1", labels={"lb.enable": "true", "lb.pool": "web", "lb.host": "a.localhost"}, networks={"n": "10.9.0.2"}
    )
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, f"  type: docker\n  docker:\n    url: {engine.url}\n")
    async with service(path):
        # The config has no routes (every request went to "default"): that stays so for unmatched requests.
        await eventually(lambda: _equal(route_table(store), ([("docker-web", "web", "a.localhost", "/")], "default")))


async def test_a_discovered_route_shadowed_by_an_operators_is_refused_and_logged(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, engine: FakeDockerEngine
) -> None:
    table = RouteTableSetting(routes=[RouteConfig(name="mine", host="a.localhost", pool="default")])
    await store.set_routes(table)
    engine.add_container(
        "web1", labels={"lb.enable": "true", "lb.pool": "web", "lb.host": "a.localhost"}, networks={"n": "10.9.0.2"}
    )
    path = tmp_path / "gobalancer.yaml"
    write_config(path, redis_url, namespace, f"  type: docker\n  docker:\n    url: {engine.url}\n")
    with capture_logs() as logs:
        async with service(path):
            await eventually(lambda: _equal(pools_of(store), {"10.9.0.2:80": "web"}))
            refused = "route table not written: discovered routes refused"
            await eventually(lambda: _count(logs, refused) == 1 or None)
            assert await route_table(store) == ([("mine", "default", "a.localhost", "/")], "")


async def test_several_kubernetes_services_each_into_its_pool(
    tmp_path: Path, redis_url: str, namespace: str, store: Store
) -> None:
    from tests.fakes.k8s_api import FakeKubernetesAPI, endpoint

    with FakeKubernetesAPI() as api:
        api.apply("web-a", [endpoint("10.1.0.1")], service="web")
        api.apply("api-a", [endpoint("10.2.0.1"), endpoint("10.2.0.2")], service="api", namespace="apps")
        api.apply(
            "admin-a",
            [endpoint("10.3.0.1")],
            service="admin",
            ports=({"name": "metrics", "port": 9000}, {"name": "http", "port": 8081}),
        )
        path = tmp_path / "gobalancer.yaml"
        body = (
            f"  type: kubernetes\n  kubernetes:\n    service: web\n    api_url: {api.url}\n    services:\n"
            "      - {service: api, namespace: apps, pool: api}\n"
            "      - {service: admin, pool: admin, port: http}\n"
        )
        write_config(path, redis_url, namespace, body)
        async with service(path):
            want = {
                "10.1.0.1:8080": "default",
                "10.2.0.1:8080": "api",
                "10.2.0.2:8080": "api",
                "10.3.0.1:8081": "admin",
            }
            await eventually(lambda: _equal(pools_of(store), want), message="each Service into its pool")
            assert {"api", "admin"} <= (await store.get_pools()).keys()
            # A change of one Service reaches the store; the others are untouched.
            api.apply("api-a", [endpoint("10.2.0.2")], service="api", namespace="apps")
            del want["10.2.0.1:8080"]
            await eventually(lambda: _equal(pools_of(store), want), message="api's endpoint removed")
            # An address in two Services' endpoints: the first configured (service, then services in order) wins.
            with capture_logs() as logs:
                api.apply("admin-b", [endpoint("10.1.0.1")], service="admin", ports=({"name": "http", "port": 8080},))
                clash = "address in two Services' endpoints; the first configured wins"
                await eventually(lambda: _count(logs, clash) == 1 or None, message="the clash logged")
            assert await pools_of(store) == want


async def _equal(value: Awaitable[object], want: object) -> bool:
    return bool(await value == want)


async def _has_pool(store: Store, name: str) -> bool:
    return name in await store.get_pools()


def _count(logs: Sequence[Mapping[str, Any]], event: str) -> int:
    return sum(1 for e in logs if e["event"] == event)


async def test_seeding_is_idempotent_and_writes_nothing_when_nothing_changed(tmp_path: Path, store: Store) -> None:
    from services.discovery.seeding import DesiredSettings, Seeder
    from shared.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(POOLS, encoding="utf-8")
    seeder = Seeder(load_config(path, {}))
    settings = DesiredSettings(
        pools=("jobs",), routes=(RouteConfig(name="docker-jobs", pool="jobs", host="j.localhost"),)
    )
    await seeder.apply(store, settings, None)
    assert (seeder.created, seeder.route_writes) == (3, 1)  # api, jobs, web; one table
    assert [r.name for r in (await store.get_routes() or RouteTableSetting()).routes] == ["web", "api", "docker-jobs"]
    version = (await store.snapshot()).version
    for _ in range(3):  # the leader's periodic passes
        await seeder.apply(store, settings, None)
    assert (seeder.created, seeder.route_writes) == (3, 1)
    assert (await store.snapshot()).version == version  # not one write, not one event
    # The source's route goes: only discovery's route is removed.
    await seeder.apply(store, DesiredSettings(pools=("jobs",), routes=()), None)
    assert [r.name for r in (await store.get_routes() or RouteTableSetting()).routes] == ["web", "api"]


async def test_an_address_in_several_pools_of_the_file_is_written_in_the_first_and_logged(
    tmp_path: Path, redis_url: str, namespace: str, store: Store
) -> None:
    path = tmp_path / "gobalancer.yaml"
    body = "pools:\n  one: {backends: [{address: '10.0.0.7:80'}]}\n  two: {backends: [{address: '10.0.0.7:80'}]}\n"
    write_config(path, redis_url, namespace, body)
    with capture_logs() as logs:
        async with service(path):
            await eventually(lambda: _equal(pools_of(store), {"10.0.0.7:80": "one"}))
    (warning,) = [e for e in logs if e["event"].startswith("addresses in several pools")]
    assert warning["shared"] == ["10.0.0.7:80: pool one (kept), two"]
