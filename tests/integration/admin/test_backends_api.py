"""Every /backends endpoint and every error path, through AsyncTestClient against a real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from shared.models import Backend, Ejection, ReplicaInfo
from shared.store import Store
from tests.integration.admin.server import caught_up

Client = AsyncTestClient[Litestar]
PROBLEM = "application/problem+json"


async def push_inflight(store: Store, replica_id: str, counts: dict[str, int], service: str = "proxy") -> None:
    info = ReplicaInfo(id=replica_id, service=service, started_at=time.time(), heartbeat_at=0.0, host="h", pid=1)
    await store.push_counters(info, 1, {}, counts, ttl=30.0, force_absolute=True)


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:gobalancer:problem:")
    assert body["title"] and body["detail"]
    if field is not None:
        assert body["field"] == field, body
        assert body["errors"][0]["field"] == field
    return body


async def test_list_is_empty_then_shows_added_backend(client: Client) -> None:
    r = await client.get("/backends")
    assert r.status_code == 200 and r.json() == []
    r = await client.post("/backends", json={"address": "10.0.0.1:80", "weight": 5})
    assert r.status_code == 201
    items = (await client.get("/backends")).json()
    assert [i["address"] for i in items] == ["10.0.0.1:80"]
    item = items[0]
    for key in ("address", "weight", "alive", "conn_count", "health", "state", "origin", "ejected"):
        assert key in item
    assert item["weight"] == 5 and item["origin"] == "api" and item["state"] == "enabled"


async def test_add_normalizes_and_writes_once(client: Client, store: Store) -> None:
    before = await store.version()
    r = await client.post("/backends", json={"address": "Web-1.Example.COM:8080"})
    assert r.status_code == 201
    body = r.json()
    assert body["address"] == "web-1.example.com:8080"
    assert body["weight"] == 1 and body["health"] == "unknown" and body["alive"] is False
    assert body["conn_count"] == 0 and body["ejected"] is False and body["created_at"] > 0
    view = await store.get_backend("web-1.example.com:8080")
    assert view is not None and view.backend.origin == "api"
    assert await store.version() == before + 1


async def test_add_ipv6_and_fetch_it_url_encoded(client: Client) -> None:
    r = await client.post("/backends", json={"address": "[0:0::1]:9000", "weight": 2})
    assert r.status_code == 201 and r.json()["address"] == "[::1]:9000"
    r = await client.get("/backends/%5B%3A%3A1%5D%3A9000")
    assert r.status_code == 200 and r.json()["weight"] == 2
    r = await client.delete("/backends/%5B%3A%3A1%5D%3A9000")
    assert r.status_code == 204


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"weight": 3}, "address"),
        ({"address": "no-port"}, "address"),
        ({"address": "10.0.0.1:0"}, "address"),
        ({"address": "10.0.0.1:65536"}, "address"),
        ({"address": "999.0.0.1:80"}, "address"),
        ({"address": "::1:80"}, "address"),
        ({"address": 12}, "address"),
        ({"address": "10.0.0.1:80", "weight": 0}, "weight"),
        ({"address": "10.0.0.1:80", "weight": 10001}, "weight"),
        ({"address": "10.0.0.1:80", "weight": "5"}, "weight"),
        ({"address": "10.0.0.1:80", "weight": 1.5}, "weight"),
        ({"address": "10.0.0.1:80", "weight": True}, "weight"),
        ({"address": "10.0.0.1:80", "state": "sleeping"}, "state"),
        ({"address": "10.0.0.1:80", "origin": "docker"}, "origin"),
        ({"address": "10.0.0.1:80", "color": "red"}, "color"),
        ([{"address": "10.0.0.1:80"}], "body"),
    ],
)
async def test_add_rejects_invalid_bodies_and_writes_nothing(
    client: Client, store: Store, body: Any, field: str
) -> None:
    before = await store.version()
    problem = assert_problem(await client.post("/backends", json=body), 400, field)
    assert field in problem["detail"]
    assert await store.list_backends() == []
    assert await store.version() == before


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"null"])
async def test_add_rejects_non_json(client: Client, store: Store, raw: bytes) -> None:
    r = await client.post("/backends", content=raw, headers={"content-type": "application/json"})
    assert_problem(r, 400, "body")
    assert await store.list_backends() == []


async def test_unknown_field_names_the_allowed_ones(client: Client) -> None:
    problem = assert_problem(await client.post("/backends", json={"address": "a:1", "wieght": 2}), 400, "wieght")
    assert "allowed: address, weight, state" in problem["detail"]


async def test_add_refuses_a_form_encoded_body_even_if_it_is_json(client: Client, store: Store) -> None:
    # `curl -d '{...}'` sends application/x-www-form-urlencoded, and so does a cross-site HTML form (CSRF):
    # the body must be declared JSON (issue 15).
    r = await client.post(
        "/backends",
        content=b'{"address": "10.0.0.7:80", "weight": 4}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_problem(r, 415, "content-type")
    assert await store.list_backends() == []


async def test_add_existing_is_409_and_changes_nothing(client: Client, store: Store) -> None:
    assert (await client.post("/backends", json={"address": "[::1]:80", "weight": 2})).status_code == 201
    before = await store.version()
    problem = assert_problem(await client.post("/backends", json={"address": "[0::1]:80", "weight": 9}), 409)
    assert "[::1]:80" in problem["detail"]
    view = await store.get_backend("[::1]:80")
    assert view is not None and view.backend.weight == 2
    assert await store.version() == before


async def test_get_one(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.2:80", weight=7, origin="docker"))
    await caught_up(client.app, store)
    r = await client.get("/backends/10.0.0.2:80")
    assert r.status_code == 200
    assert r.json()["weight"] == 7 and r.json()["origin"] == "docker"
    assert_problem(await client.get("/backends/10.0.0.3:80"), 404)
    assert_problem(await client.get("/backends/not-an-address"), 400, "address")
    assert_problem(await client.get("/backends/10.0.0.2:99999"), 400, "address")


async def test_list_reports_health_ejection_and_global_inflight(client: Client, store: Store) -> None:
    for addr in ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"):
        await store.create_backend(Backend(address=addr))
    await store.set_health("10.0.0.1:80", "up")
    await store.set_health("10.0.0.2:80", "up")
    await store.set_health("10.0.0.3:80", "down", "connect refused")
    await store.set_ejection("10.0.0.2:80", Ejection(replica="proxy-a", until=time.time() + 60, reason="5xx"))
    await push_inflight(store, "proxy-a", {"10.0.0.1:80": 3, "10.0.0.2:80": 1})
    await push_inflight(store, "proxy-b", {"10.0.0.1:80": 2})
    await caught_up(client.app, store, inflight=True)
    items = {i["address"]: i for i in (await client.get("/backends")).json()}
    one, two, three = items["10.0.0.1:80"], items["10.0.0.2:80"], items["10.0.0.3:80"]
    assert (one["alive"], one["health"], one["conn_count"], one["ejected"]) == (True, "up", 5, False)
    assert (two["alive"], two["ejected"], two["conn_count"]) == (False, True, 1)
    assert two["ejected_until"] > time.time()
    assert (three["alive"], three["health"], three["health_reason"]) == (False, "down", "connect refused")
    assert (await client.get("/backends/10.0.0.1:80")).json()["conn_count"] == 5


async def test_put_sets_weight(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80", weight=1))
    r = await client.put("/backends/10.0.0.1:80", json={"weight": 42})
    assert r.status_code == 200 and r.json()["weight"] == 42
    view = await store.get_backend("10.0.0.1:80")
    assert view is not None and view.backend.weight == 42


async def test_put_accepts_the_same_address_in_the_body(client: Client) -> None:
    assert (await client.post("/backends", json={"address": "[::1]:80"})).status_code == 201
    r = await client.put("/backends/%5B%3A%3A1%5D%3A80", json={"address": "[0::1]:80", "weight": 9})
    assert r.status_code == 200 and r.json()["weight"] == 9
    problem = assert_problem(await client.put("/backends/[::1]:80", json={"address": "[::2]:80", "weight": 3}), 400)
    assert problem["field"] == "address" and "[::2]:80" in problem["detail"]


async def test_put_errors(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80", weight=3))
    before = await store.version()
    assert_problem(await client.put("/backends/10.0.0.1:80", json={"weight": 0}), 400, "weight")
    assert_problem(await client.put("/backends/10.0.0.1:80", json={}), 400, "weight")
    assert_problem(await client.put("/backends/10.0.0.1:80", json={"weight": 2, "state": "draining"}), 400, "state")
    assert_problem(await client.put("/backends/10.0.0.1:80", json={"weight": 2, "address": "x"}), 400, "address")
    assert_problem(await client.put("/backends/bad", json={"weight": 2}), 400, "address")
    assert_problem(await client.put("/backends/10.0.0.9:80", json={"weight": 2}), 404)
    assert await store.version() == before
    view = await store.get_backend("10.0.0.1:80")
    assert view is not None and view.backend.weight == 3


async def test_patch_changes_only_given_fields(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80", weight=3))
    r = await client.patch("/backends/10.0.0.1:80", json={"state": "disabled"})
    assert r.status_code == 200 and (r.json()["state"], r.json()["weight"]) == ("disabled", 3)
    r = await client.patch("/backends/10.0.0.1:80", json={"weight": 8, "state": "enabled"})
    assert r.status_code == 200 and (r.json()["state"], r.json()["weight"]) == ("enabled", 8)
    before = await store.version()
    assert_problem(await client.patch("/backends/10.0.0.1:80", json={}), 400, "body")
    assert_problem(await client.patch("/backends/10.0.0.1:80", json={"state": "gone"}), 400, "state")
    assert_problem(await client.patch("/backends/10.0.0.1:80", json={"origin": "api"}), 400, "origin")
    assert_problem(await client.patch("/backends/10.0.0.2:80", json={"weight": 2}), 404)
    assert await store.version() == before


async def test_delete(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80"))
    await store.set_health("10.0.0.1:80", "up")
    r = await client.delete("/backends/10.0.0.1:80")
    assert r.status_code == 204 and r.content == b""
    assert await store.get_backend("10.0.0.1:80") is None
    assert_problem(await client.delete("/backends/10.0.0.1:80"), 404)
    assert_problem(await client.delete("/backends/x"), 400, "address")


async def test_delete_discovered_backend_needs_force(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.5:80", origin="kubernetes"))
    before = await store.version()
    problem = assert_problem(await client.delete("/backends/10.0.0.5:80"), 409, "force")
    assert "kubernetes" in problem["detail"] and "force=true" in problem["detail"]
    assert await store.get_backend("10.0.0.5:80") is not None
    assert await store.version() == before
    assert_problem(await client.delete("/backends/10.0.0.5:80?force=perhaps"), 400, "force")
    assert (await client.delete("/backends/10.0.0.5:80?force=true")).status_code == 204
    assert await store.get_backend("10.0.0.5:80") is None


async def test_drain_reports_inflight_then_enable_and_disable(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80"))
    await store.set_health("10.0.0.1:80", "up")
    await push_inflight(store, "proxy-a", {"10.0.0.1:80": 4})
    await push_inflight(store, "proxy-b", {"10.0.0.1:80": 1})
    r = await client.post("/backends/10.0.0.1:80/drain")
    assert r.status_code == 200
    body = r.json()
    assert (body["state"], body["in_flight"], body["changed"]) == ("draining", 5, True)
    assert body["backend"]["alive"] is False
    view = await store.get_backend("10.0.0.1:80")
    assert view is not None and view.backend.state == "draining"
    again = (await client.post("/backends/10.0.0.1:80/drain")).json()
    assert again["changed"] is False
    r = await client.post("/backends/10.0.0.1:80/enable")
    assert r.status_code == 200 and r.json()["state"] == "enabled" and r.json()["backend"]["alive"] is True
    r = await client.post("/backends/10.0.0.1:80/disable")
    assert r.status_code == 200 and r.json()["state"] == "disabled"
    for action in ("drain", "enable", "disable"):
        assert_problem(await client.post(f"/backends/10.0.0.9:80/{action}"), 404)
        assert_problem(await client.post(f"/backends/nope/{action}"), 400, "address")


async def test_every_change_bumps_the_version_by_one(client: Client, store: Store) -> None:
    calls = [
        ("POST", "/backends", {"address": "10.0.0.1:80"}),
        ("PUT", "/backends/10.0.0.1:80", {"weight": 5}),
        ("PATCH", "/backends/10.0.0.1:80", {"weight": 6}),
        ("POST", "/backends/10.0.0.1:80/drain", None),
        ("PUT", "/algorithm", {"algorithm": "p2c"}),
        ("DELETE", "/backends/10.0.0.1:80", None),
    ]
    for method, path, body in calls:
        before = await store.version()
        r = await client.request(method, path, json=body) if body is not None else await client.request(method, path)
        assert r.status_code < 300, r.text
        assert await store.version() == before + 1, (method, path)


async def test_unknown_route_and_method_are_problems(client: Client) -> None:
    assert_problem(await client.get("/nowhere"), 404)
    assert_problem(await client.delete("/backends"), 405)
