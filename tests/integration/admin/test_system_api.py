"""/algorithm, /replicas, /metrics, /health and the OpenAPI schema, through AsyncTestClient."""

from __future__ import annotations

import re

from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.admin.app import create_app
from shared.models import Backend
from shared.store import Store
from tests.integration.admin.server import admin_config, caught_up
from tests.integration.admin.test_backends_api import assert_problem, push_inflight

Client = AsyncTestClient[Litestar]


async def test_algorithm_get_and_put(client: Client, store: Store) -> None:
    r = await client.get("/algorithm")
    assert r.status_code == 200 and r.json()["algorithm"] == "round_robin"
    r = await client.put("/algorithm", json={"algorithm": "ip_hash", "hash_key": "header:X-User", "hash_epsilon": 0.5})
    assert r.status_code == 200
    assert (r.json()["algorithm"], r.json()["hash_key"], r.json()["changed"]) == ("ip_hash", "header:X-User", True)
    stored = await store.get_algorithm()
    assert (stored.name, stored.hash_key, stored.hash_epsilon) == ("ip_hash", "header:X-User", 0.5)
    assert (await client.get("/algorithm")).json()["algorithm"] == "ip_hash"


async def test_algorithm_errors_write_nothing(client: Client, store: Store) -> None:
    before = await store.version()
    assert_problem(await client.put("/algorithm", json={"algorithm": "fastest"}), 400, "algorithm")
    assert_problem(await client.put("/algorithm", json={}), 400, "algorithm")
    assert_problem(await client.put("/algorithm", json={"algorithm": "p2c", "speed": 1}), 400, "speed")
    assert_problem(await client.put("/algorithm", json={"algorithm": "ip_hash", "hash_key": "ear"}), 400, "hash_key")
    assert_problem(await client.put("/algorithm", json={"algorithm": "p2c", "hash_epsilon": 0}), 400, "hash_epsilon")
    assert_problem(await client.put("/algorithm", json={"name": "p2c"}), 400)
    assert await store.version() == before
    assert (await store.get_algorithm()).name == "round_robin"


async def test_replicas_show_heartbeat_age_and_inflight(client: Client, store: Store) -> None:
    await push_inflight(store, "proxy-a", {"10.0.0.1:80": 2})
    items = (await client.get("/replicas?service=proxy")).json()
    assert [i["id"] for i in items] == ["proxy-a"]
    assert items[0]["inflight"] == {"10.0.0.1:80": 2}
    assert 0 <= items[0]["heartbeat_age_sec"] < 30
    # The admin service itself heartbeats too (its lifespan opened the store).
    every = (await client.get("/replicas")).json()
    assert {i["service"] for i in every} == {"admin", "proxy"}


async def test_health_ok(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80"))
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["redis"] == "up" and r.json()["version"] == await store.version()


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    m = re.search(pattern, text)
    assert m, f"{name}{{{labels}}} not in metrics"
    return float(m.group(1))


async def test_metrics_count_requests_and_read_the_store(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80"))
    await store.create_backend(Backend(address="10.0.0.2:80", state="draining"))
    await store.set_health("10.0.0.1:80", "up")
    await push_inflight(store, "proxy-a", {"10.0.0.1:80": 3})
    await caught_up(client.app, store)
    await client.get("/backends")
    await client.get("/backends/10.0.0.9:80")
    await client.get("/nowhere")
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "gobalancer_admin_requests_total", 'method="GET",route="/backends",status="200"') == 1
    assert metric(text, "gobalancer_admin_requests_total", 'method="GET",route="/backends/{address}",status="404"') == 1
    assert metric(text, "gobalancer_admin_requests_total", 'method="GET",route="unmatched",status="404"') == 1
    assert metric(text, "gobalancer_backends", 'health="up",state="enabled"') == 1
    assert metric(text, "gobalancer_backends", 'health="unknown",state="draining"') == 1
    assert metric(text, "gobalancer_backends", 'health="down",state="enabled"') == 0
    assert metric(text, "gobalancer_backends_usable") == 1
    assert metric(text, "gobalancer_backend_inflight", 'address="10.0.0.1:80"') == 3
    assert metric(text, "gobalancer_replicas", 'service="proxy"') == 1
    assert metric(text, "gobalancer_algorithm", 'algorithm="round_robin"') == 1
    assert metric(text, "gobalancer_admin_redis_up") == 1
    # A removed backend's gauge goes away instead of lingering.
    await store.remove_backend("10.0.0.1:80")
    await caught_up(client.app, store)
    assert 'address="10.0.0.1:80"' not in (await client.get("/metrics")).text


async def test_openapi_schema_and_browsable_page_without_cdn(client: Client) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    assert schema["openapi"].startswith("3.1")
    paths = schema["paths"]
    for path in ("/health", "/backends", "/backends/{address}", "/backends/{address}/drain", "/algorithm", "/events"):
        assert path in paths
    assert set(paths["/backends/{address}"]) >= {"get", "put", "patch", "delete"}
    assert "application/problem+json" in paths["/backends"]["post"]["responses"]["409"]["content"]
    page = await client.get("/schema")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/backends/{address}/drain" in page.text
    assert "<script" not in page.text and "https://" not in page.text
    # Swagger UI is only offered when a local copy is configured.
    assert (await client.get("/schema/swagger")).status_code == 404


async def test_request_durations_are_recorded_per_route(client: Client) -> None:
    await client.get("/algorithm")
    await client.get("/algorithm")
    text = (await client.get("/metrics")).text
    assert metric(text, "gobalancer_admin_request_duration_seconds_count", 'method="GET",route="/algorithm"') == 2
    assert metric(text, "gobalancer_admin_request_duration_seconds_sum", 'method="GET",route="/algorithm"') > 0


async def test_swagger_ui_from_a_configured_local_copy(redis_url: str, namespace: str) -> None:
    app = create_app(admin_config(redis_url, namespace, swagger_ui_url="/assets/swagger-ui/"))
    async with AsyncTestClient(app) as client:
        page = await client.get("/schema/swagger")
        assert page.status_code == 200
        assert "/assets/swagger-ui/swagger-ui-bundle.js" in page.text
        assert "/assets/swagger-ui/swagger-ui.css" in page.text
        assert "https://" not in page.text and "http://" not in page.text
