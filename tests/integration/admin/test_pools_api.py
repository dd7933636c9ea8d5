"""`/pools` and `/pools/{name}/backends...`, every error path, through AsyncTestClient against a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from shared.config.durations import Seconds
from shared.models import AlgorithmSetting, Backend, RouteTableSetting
from shared.store import Store
from tests.integration.admin.server import caught_up
from tests.integration.admin.test_backends_api import assert_problem

Client = AsyncTestClient[Litestar]


async def make_pool(client: Client, name: str = "api", **body: Any) -> dict[str, Any]:
    r = await client.post("/pools", json={"name": name, **body})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


# -- /pools -----------------------------------------------------------------------------------------


async def test_the_default_pool_is_always_listed_first(client: Client, store: Store) -> None:
    r = await client.get("/pools")
    assert r.status_code == 200
    [default] = r.json()["pools"]
    assert default["name"] == "default" and default["backends"] == 0 and default["usable"] == 0
    assert default["algorithm"] == {"name": "round_robin", "hash_key": None, "hash_epsilon": None,
                                    "slow_start_sec": None}  # fmt: skip
    assert default["outlier"] is None and default["health_check"] is None

    await make_pool(client, "web")
    await make_pool(client, "api")
    assert [p["name"] for p in (await client.get("/pools")).json()["pools"]] == ["default", "api", "web"]


async def test_create_stores_every_setting_and_counts_backends(client: Client, store: Store) -> None:
    created = await make_pool(
        client,
        "api",
        algorithm={"name": "least_connections", "slow_start_sec": 5},
        outlier={"consecutive_failures": 3, "base_ejection_sec": "2s"},
        health_check={"type": "http", "path": "/healthz", "interval_sec": "500ms", "expect_status": "200,204"},
    )
    assert created["name"] == "api" and created["created_at"] > 0 and created["changed"] is True
    assert created["algorithm"]["name"] == "least_connections" and created["algorithm"]["slow_start_sec"] == 5
    assert created["outlier"]["base_ejection_sec"] == 2.0
    assert created["health_check"]["interval_sec"] == 0.5 and created["health_check"]["path"] == "/healthz"
    stored = await store.get_pool("api")
    assert stored is not None and stored.health_check is not None
    assert stored.health_check.interval_sec == Seconds(0.5) and stored.algorithm.name == "least_connections"

    await store.create_backend(Backend(address="10.0.0.1:80", pool="api"))
    await store.create_backend(Backend(address="10.0.0.2:80", pool="api", state="disabled"))
    await store.set_health("10.0.0.1:80", "up")
    await caught_up(client.app, store)
    got = (await client.get("/pools/api")).json()
    assert got["backends"] == 2 and got["usable"] == 1
    assert (await client.get("/pools/default")).json()["backends"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": "-x"}, "name"),
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "a", "algorithm": {"name": "random"}}, "algorithm.name"),
        ({"name": "a", "algorithm": {"name": "ip_hash", "hash_key": "ip"}}, "algorithm.hash_key"),
        ({"name": "a", "algorithm": {"name": "ip_hash", "hash_epsilon": 0}}, "algorithm.hash_epsilon"),
        ({"name": "a", "algorithm": {}}, "algorithm.name"),
        ({"name": "a", "health_check": {"path": "healthz"}}, "health_check.path"),
        ({"name": "a", "health_check": {"expect_status": "2xx"}}, "health_check.expect_status"),
        ({"name": "a", "health_check": {"interval_sec": 0}}, "health_check.interval_sec"),
        ({"name": "a", "health_check": {"interval_sec": "soon"}}, "health_check.interval_sec"),
        ({"name": "a", "health_check": {"type": "udp"}}, "health_check.type"),
        ({"name": "a", "health_check": {"colour": "red"}}, "health_check.colour"),
        ({"name": "a", "outlier": {"base_ejection_sec": 60, "max_ejection_sec": 10}}, "outlier.max_ejection_sec"),
        ({"name": "a", "outlier": {"max_ejection_percent": 101}}, "outlier.max_ejection_percent"),
        ({"name": "a", "backends": []}, "backends"),
    ],
)
async def test_create_refuses_a_bad_body_naming_the_field(
    client: Client, store: Store, body: dict[str, Any], field: str
) -> None:
    before = await store.version()
    assert_problem(await client.post("/pools", json=body), 400, field)
    assert await store.version() == before and await store.get_pools() == {}


async def test_create_refuses_an_existing_pool_and_default(client: Client) -> None:
    await make_pool(client, "api", algorithm={"name": "p2c"})
    body = assert_problem(await client.post("/pools", json={"name": "api"}), 409, "name")
    assert "api" in body["detail"]
    assert (await client.get("/pools/api")).json()["algorithm"]["name"] == "p2c"  # untouched
    assert_problem(await client.post("/pools", json={"name": "default"}), 409, "name")


async def test_get_put_patch_delete_a_pool(client: Client, store: Store) -> None:
    assert_problem(await client.get("/pools/api"), 404)
    assert_problem(await client.get("/pools/bad%20name"), 400, "name")
    assert_problem(await client.patch("/pools/api", json={"outlier": None}), 404)
    assert_problem(await client.delete("/pools/api"), 404)

    r = await client.put("/pools/api", json={"algorithm": {"name": "ewma"}, "health_check": {"type": "http"}})
    assert r.status_code == 200 and r.json()["changed"] is True  # put creates
    created_at = r.json()["created_at"]
    before = await store.version()
    r = await client.put("/pools/api", json={"algorithm": {"name": "ewma"}, "health_check": {"type": "http"}})
    assert r.json()["changed"] is False and await store.version() == before  # the same: nothing written
    assert_problem(await client.put("/pools/api", json={"name": "web"}), 400, "name")

    r = await client.patch("/pools/api", json={"outlier": {"consecutive_failures": 2}})
    assert r.status_code == 200
    body = r.json()
    assert body["outlier"]["consecutive_failures"] == 2 and body["health_check"]["type"] == "http"  # kept
    assert body["algorithm"]["name"] == "ewma" and body["created_at"] == created_at
    r = await client.patch("/pools/api", json={"health_check": None, "algorithm": {"name": "ip_hash"}})
    assert r.json()["health_check"] is None and r.json()["algorithm"]["name"] == "ip_hash"
    assert_problem(await client.patch("/pools/api", json={}), 400, "body")
    assert_problem(await client.patch("/pools/api", json={"health_check": {"method": "get"}}), 400,
                   "health_check.method")  # fmt: skip

    r = await client.put("/pools/api", json={})  # every setting back to the configuration's
    assert r.json()["outlier"] is None and r.json()["algorithm"]["name"] == "round_robin"

    assert (await client.delete("/pools/api")).status_code == 204
    assert await store.get_pool("api") is None
    assert_problem(await client.get("/pools/api"), 404)


async def test_the_default_pool_keeps_its_algorithm_at_algorithm(client: Client, store: Store) -> None:
    r = await client.patch("/pools/default", json={"algorithm": {"name": "least_connections"}})
    assert r.status_code == 200 and r.json()["algorithm"]["name"] == "least_connections"
    assert (await store.get_algorithm()).name == "least_connections"
    assert (await client.get("/algorithm")).json()["algorithm"] == "least_connections"

    r = await client.patch("/pools/default", json={"health_check": {"type": "http", "path": "/up"}})
    assert r.json()["health_check"]["path"] == "/up" and r.json()["algorithm"]["name"] == "least_connections"
    stored = await store.get_pool("default")
    assert stored is not None and stored.health_check is not None and stored.health_check.path == "/up"
    assert (await store.get_algorithm()).name == "least_connections"  # a PATCH without it keeps it

    body = assert_problem(await client.delete("/pools/default"), 409)
    assert "cannot be deleted" in body["detail"]
    assert (await client.get("/pools")).json()["pools"][0]["health_check"]["path"] == "/up"


async def test_delete_refuses_a_pool_in_use_saying_why(client: Client, store: Store) -> None:
    await make_pool(client, "api")
    r = await client.post("/pools/api/backends", json={"address": "10.0.0.1:80"})
    assert r.status_code == 201
    body = assert_problem(await client.delete("/pools/api"), 409)
    assert "1 backend(s)" in body["detail"]
    assert (await client.delete("/pools/api/backends/10.0.0.1:80")).status_code == 204

    await store.set_routes(RouteTableSetting(default_pool="api"))
    body = assert_problem(await client.delete("/pools/api"), 409)
    assert "route table" in body["detail"]
    assert await store.get_pool("api") is not None

    await store.set_routes(RouteTableSetting())
    assert (await client.delete("/pools/api")).status_code == 204


async def test_writes_need_the_token(redis_url: str, namespace: str) -> None:
    from services.admin.app import create_app
    from tests.integration.admin.server import admin_config

    app = create_app(admin_config(redis_url, namespace, token="s3cret"))
    async with AsyncTestClient(app) as c:
        assert (await c.get("/pools")).status_code == 200
        assert_problem(await c.post("/pools", json={"name": "api"}), 401)
        assert_problem(await c.put("/pools/api", json={}), 401)
        assert_problem(await c.delete("/pools/api"), 401)
        assert_problem(await c.post("/pools/default/backends", json={"address": "10.0.0.1:80"}), 401)
        assert_problem(await c.put("/routes", json={"routes": []}), 401)
        ok = await c.post("/pools", json={"name": "api"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 201


# -- /pools/{name}/backends -------------------------------------------------------------------------


async def test_a_pools_backends_are_its_own(client: Client, store: Store) -> None:
    await make_pool(client, "api")
    r = await client.post("/pools/api/backends", json={"address": "10.0.0.1:80", "weight": 3})
    assert r.status_code == 201 and r.json()["pool"] == "api" and r.json()["weight"] == 3
    assert (await client.post("/backends", json={"address": "10.0.0.2:80"})).json()["pool"] == "default"
    view = await store.get_backend("10.0.0.1:80")
    assert view is not None and view.backend.pool == "api"

    assert [b["address"] for b in (await client.get("/pools/api/backends")).json()] == ["10.0.0.1:80"]
    assert [b["address"] for b in (await client.get("/backends")).json()] == ["10.0.0.2:80"]  # default only
    assert [b["address"] for b in (await client.get("/pools/default/backends")).json()] == ["10.0.0.2:80"]
    assert (await client.get("/pools/api/backends/10.0.0.1:80")).json()["pool"] == "api"

    # Another pool's backend is not found here, and the problem says where it is.
    body = assert_problem(await client.get("/backends/10.0.0.1:80"), 404)
    assert "'api'" in body["detail"] and "/pools/api/backends" in body["detail"]
    assert_problem(await client.get("/pools/api/backends/10.0.0.2:80"), 404)
    for call in (
        client.put("/backends/10.0.0.1:80", json={"weight": 5}),
        client.patch("/backends/10.0.0.1:80", json={"state": "draining"}),
        client.post("/backends/10.0.0.1:80/drain"),
        client.delete("/backends/10.0.0.1:80"),
        client.delete("/backends/10.0.0.1:80/override"),
    ):
        assert_problem(await call, 404)
    view = await store.get_backend("10.0.0.1:80")
    assert view is not None and view.backend.weight == 3 and view.backend.state == "enabled"  # untouched

    r = await client.put("/pools/api/backends/10.0.0.1:80", json={"weight": 7})
    assert r.status_code == 200 and r.json()["weight"] == 7
    r = await client.patch("/pools/api/backends/10.0.0.1:80", json={"state": "disabled"})
    assert r.json()["state"] == "disabled"
    for action, state in (("drain", "draining"), ("enable", "enabled"), ("disable", "disabled")):
        r = await client.post(f"/pools/api/backends/10.0.0.1:80/{action}")
        assert r.status_code == 200 and r.json()["state"] == state and r.json()["backend"]["pool"] == "api"
    assert (await client.delete("/pools/api/backends/10.0.0.1:80/override")).status_code == 200
    assert (await client.delete("/pools/api/backends/10.0.0.1:80")).status_code == 204
    assert (await client.get("/pools/api/backends")).json() == []


async def test_an_address_serves_one_pool(client: Client, store: Store) -> None:
    await make_pool(client, "api")
    await client.post("/backends", json={"address": "10.0.0.1:80"})
    body = assert_problem(await client.post("/pools/api/backends", json={"address": "10.0.0.1:80"}), 409, "address")
    assert "in pool 'default'" in body["detail"]
    view = await store.get_backend("10.0.0.1:80")
    assert view is not None and view.backend.pool == "default"


async def test_pool_backends_errors(client: Client, store: Store) -> None:
    assert_problem(await client.get("/pools/nope/backends"), 404)
    assert_problem(await client.post("/pools/nope/backends", json={"address": "10.0.0.1:80"}), 404)
    assert await store.get_backend("10.0.0.1:80") is None
    assert_problem(await client.get("/pools/bad%20name/backends"), 400, "name")
    await make_pool(client, "api")
    assert_problem(await client.post("/pools/api/backends", json={"address": "10.0.0.1"}), 400, "address")
    assert_problem(await client.post("/pools/api/backends", json={"address": "10.0.0.1:80", "pool": "x"}), 400,
                   "pool")  # fmt: skip
    assert_problem(await client.get("/pools/api/backends/10.0.0.9:80"), 404)
    assert_problem(await client.get("/pools/api/backends?state=sleeping"), 400)


async def test_pages_of_a_pool_link_to_its_own_path(client: Client, store: Store) -> None:
    await make_pool(client, "api")
    for i in range(5):
        await store.create_backend(Backend(address=f"10.0.1.{i}:80", pool="api"))
        await store.create_backend(Backend(address=f"10.0.0.{i}:80"))
    await caught_up(client.app, store)
    r = await client.get("/pools/api/backends?limit=2")
    assert [b["address"] for b in r.json()] == ["10.0.1.0:80", "10.0.1.1:80"]
    assert r.headers["x-next-cursor"] == "10.0.1.1:80"
    assert r.headers["link"].startswith("</pools/api/backends?limit=2&cursor=")
    r = await client.get("/pools/api/backends", params={"limit": 10, "cursor": "10.0.1.1:80"})
    assert [b["address"] for b in r.json()] == ["10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80"]
    assert len((await client.get("/backends")).json()) == 5

    # A backend moved to another pool (by discovery, say) leaves one list for the other.
    await store.update_backend("10.0.0.0:80", {"pool": "api"})
    await store.remove_backend("10.0.1.4:80")
    await caught_up(client.app, store)
    assert len((await client.get("/backends")).json()) == 4
    listed = [b["address"] for b in (await client.get("/pools/api/backends")).json()]
    assert listed == ["10.0.0.0:80", "10.0.1.0:80", "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]
    counts = {p["name"]: p["backends"] for p in (await client.get("/pools")).json()["pools"]}
    assert counts == {"default": 4, "api": 5}


async def test_the_docs_list_pools_and_routes(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert set(paths["/pools"]) >= {"get", "post"}
    assert set(paths["/pools/{name}"]) >= {"get", "put", "patch", "delete"}
    assert set(paths["/pools/{pool}/backends"]) >= {"get", "post"}
    assert set(paths["/pools/{pool}/backends/{address}"]) >= {"get", "put", "patch", "delete"}
    for action in ("drain", "enable", "disable", "override"):
        assert f"/pools/{{pool}}/backends/{{address}}/{action}" in paths
    assert set(paths["/routes"]) >= {"get", "put"}
    assert "application/problem+json" in paths["/routes"]["put"]["responses"]["422"]["content"]
    page = (await client.get("/schema")).text
    for path in ("/pools/{name}", "/pools/{pool}/backends/{address}/drain", "/routes"):
        assert path in page


async def test_a_pool_named_by_backends_before_its_record_is_shown(client: Client, store: Store) -> None:
    """Discovery may write a pool's backends before the pool's record: the pool is listed (its settings
    the defaults), its backends readable; adding one through the API still needs the pool to exist."""
    await store.set_algorithm(AlgorithmSetting(name="p2c"))
    await store.create_backend(Backend(address="10.0.0.1:80", pool="early"))
    await caught_up(client.app, store)
    listed = {p["name"]: p for p in (await client.get("/pools")).json()["pools"]}
    assert listed["early"]["backends"] == 1 and listed["early"]["algorithm"]["name"] == "round_robin"
    assert listed["default"]["algorithm"]["name"] == "p2c"
    assert (await client.get("/pools/early")).json()["backends"] == 1
    assert [b["address"] for b in (await client.get("/pools/early/backends")).json()] == ["10.0.0.1:80"]
    assert_problem(await client.post("/pools/early/backends", json={"address": "10.0.0.2:80"}), 404)
