"""`GET/PUT /routes`: the table read and replaced whole; every validation error path names the rule and its
field and leaves the running table untouched. Through AsyncTestClient against a real Redis."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.admin.app import create_app
from shared.config import RouteConfig
from shared.models import PoolSetting, RouteTableSetting
from shared.store import Store
from tests.integration.admin.server import admin_config, caught_up
from tests.integration.admin.test_backends_api import assert_problem

Client = AsyncTestClient[Litestar]

GOOD = {
    "routes": [
        {"name": "api", "pool": "api", "host": "API.example.com", "path_prefix": "/v1/", "strip_prefix": True},
        {"name": "web", "pool": "web", "host": "*.example.com", "methods": ["GET", "HEAD"]},
        {"name": "canary", "pool": "web", "path_prefix": "/", "headers": {"X-Canary": "1"}, "rewrite_host": "web:80"},
        {"name": "rest", "pool": "default"},
    ],
    "default_pool": "default",
}


@pytest.fixture
async def pools(store: Store) -> None:
    for name in ("api", "web"):
        await store.set_pool(PoolSetting(name=name), mode="create")


async def test_nothing_stored_means_the_configurations_table(redis_url: str, namespace: str) -> None:
    config = admin_config(redis_url, namespace)
    config.routes = [RouteConfig(name="all", pool="default", host="a.example.com")]
    config.default_pool = "default"
    async with AsyncTestClient(create_app(config)) as client:
        body = (await client.get("/routes")).json()
    assert body["source"] == "config" and body["default_pool"] == "default" and body["updated_at"] == 0
    assert body["routes"] == [
        {"name": "all", "pool": "default", "host": "a.example.com", "path_prefix": "/", "methods": [], "headers": {},
         "strip_prefix": False, "rewrite_host": ""}
    ]  # fmt: skip


@pytest.mark.usefixtures("pools")
async def test_put_replaces_the_table_normalized(client: Client, store: Store) -> None:
    before = await store.version()
    r = await client.put("/routes", json=GOOD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "store" and body["changed"] is True and body["updated_at"] > 0
    assert [x["name"] for x in body["routes"]] == ["api", "web", "canary", "rest"]  # the order kept
    assert body["routes"][0]["host"] == "api.example.com" and body["routes"][0]["path_prefix"] == "/v1"
    assert body["routes"][2]["headers"] == {"x-canary": "1"}
    assert await store.version() == before + 1  # one write, one event
    stored = await store.get_routes()
    assert stored is not None and [x.name for x in stored.routes] == ["api", "web", "canary", "rest"]
    assert (await client.get("/routes")).json()["routes"] == body["routes"]

    again = await client.put("/routes", json=GOOD)
    assert again.json()["changed"] is False and await store.version() == before + 1

    r = await client.put("/routes", json={"routes": []})
    assert r.status_code == 200 and r.json()["routes"] == [] and r.json()["default_pool"] == ""


BAD_RULES: list[tuple[dict[str, Any], str]] = [
    ({"name": "x", "pool": "ghost"}, "pool"),
    ({"name": "bad name", "pool": "web"}, "name"),
    ({"name": "x", "pool": "web", "host": "a.example.com:80"}, "host"),
    ({"name": "x", "pool": "web", "host": "a.*.com"}, "host"),
    ({"name": "x", "pool": "web", "path_prefix": "api"}, "path_prefix"),
    ({"name": "x", "pool": "web", "path_prefix": "/a b"}, "path_prefix"),
    ({"name": "x", "pool": "web", "methods": ["get"]}, "methods"),
    ({"name": "x", "pool": "web", "methods": ["GET", "GET"]}, "methods"),
    ({"name": "x", "pool": "web", "headers": {"Host": "a"}}, "headers"),
    ({"name": "x", "pool": "web", "headers": {"bad header": "a"}}, "headers"),
    ({"name": "x", "pool": "web", "rewrite_host": "a b"}, "rewrite_host"),
    ({"name": "api", "pool": "web", "host": "other.example.com"}, "name"),  # a duplicate of routes[0]'s
]


@pytest.mark.usefixtures("pools")
@pytest.mark.parametrize(("rule", "field"), BAD_RULES)
async def test_a_bad_rule_is_refused_naming_it_and_the_table_stays(
    client: Client, store: Store, rule: dict[str, Any], field: str
) -> None:
    assert (await client.put("/routes", json=GOOD)).status_code == 200
    running = await store.get_routes()
    version = await store.version()
    table = {"routes": [*GOOD["routes"][:2], rule, *GOOD["routes"][2:]], "default_pool": "default"}
    body = assert_problem(await client.put("/routes", json=table), 422, f"routes[2].{field}")
    assert body["type"].endswith("invalid-table")
    assert await store.get_routes() == running and await store.version() == version
    await caught_up(client.app, store)
    assert [x["name"] for x in (await client.get("/routes")).json()["routes"]] == ["api", "web", "canary", "rest"]


@pytest.mark.usefixtures("pools")
async def test_table_errors_name_the_rule(client: Client, store: Store) -> None:
    shadowed = {"routes": [{"name": "a", "pool": "web", "path_prefix": "/x"},
                           {"name": "b", "pool": "api", "path_prefix": "/x/"}]}  # fmt: skip
    body = assert_problem(await client.put("/routes", json=shadowed), 422, "routes[1]")
    assert "can never match" in body["detail"] and "'a'" in body["detail"]
    assert_problem(await client.put("/routes", json={"routes": [], "default_pool": "ghost"}), 422, "default_pool")
    assert await store.get_routes() is None  # nothing was ever written

    # A pool removed since: the store holds "api" no longer.
    await store.remove_pool("api")
    await caught_up(client.app, store)
    assert_problem(await client.put("/routes", json=GOOD), 422, "routes[0].pool")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "routes"),
        ({"routes": {}}, "routes"),
        ({"routes": [{"pool": "default"}]}, "routes[0].name"),
        ({"routes": [{"name": "a", "pool": "default", "methods": "GET"}]}, "routes[0].methods"),
        ({"routes": [{"name": "a", "pool": "default", "weight": 1}]}, "routes[0].weight"),
        ({"routes": [], "source": "store"}, "source"),
    ],
)
async def test_a_malformed_body_is_a_400_naming_the_field(
    client: Client, store: Store, body: dict[str, Any], field: str
) -> None:
    assert_problem(await client.put("/routes", json=body), 400, field)
    assert await store.get_routes() is None


async def test_a_table_set_elsewhere_shows_up(client: Client, store: Store) -> None:
    assert (await client.get("/routes")).json()["source"] == "config"
    table = RouteTableSetting(routes=[RouteConfig(name="r", pool="default", host="x.example.com")])
    await store.set_routes(table)
    await caught_up(client.app, store)
    body = (await client.get("/routes")).json()
    assert body["source"] == "store" and body["routes"][0] == msgspec.to_builtins(table.routes[0])
