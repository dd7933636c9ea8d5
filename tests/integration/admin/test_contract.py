"""Replays the original GoBalancer admin API's calls, in order, and checks the same status codes."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from services.admin.app import create_app
from shared.redis_server import RedisServer
from tests.integration.admin.server import admin_config

# (method, path, JSON body, expected status) - the original API's documented behaviour.
ORIGINAL_CALLS: list[tuple[str, str, object, int]] = [
    ("GET", "/health", None, 200),
    ("GET", "/backends", None, 200),
    ("POST", "/backends", {"address": "127.0.0.1:9001", "weight": 1}, 201),
    ("POST", "/backends", {"address": "127.0.0.1:9002", "weight": 3}, 201),
    ("POST", "/backends", {"address": "127.0.0.1:9001", "weight": 1}, 409),
    ("POST", "/backends", {"address": "127.0.0.1", "weight": 1}, 400),
    ("POST", "/backends", {"address": "127.0.0.1:9003", "weight": -1}, 400),
    ("GET", "/backends", None, 200),
    ("GET", "/backends/127.0.0.1:9001", None, 200),
    ("GET", "/backends/127.0.0.1:9999", None, 404),
    ("PUT", "/backends/127.0.0.1:9001", {"weight": 5}, 200),
    ("PUT", "/backends/127.0.0.1:9001", {"weight": "heavy"}, 400),
    ("PUT", "/backends/127.0.0.1:9999", {"weight": 5}, 404),
    ("DELETE", "/backends/127.0.0.1:9002", None, 204),
    ("DELETE", "/backends/127.0.0.1:9002", None, 404),
    ("GET", "/backends/127.0.0.1:9002", None, 404),
]


async def test_original_api_sequence_then_health_follows_redis(private_redis: RedisServer) -> None:
    app = create_app(admin_config(private_redis.url, "contract"))
    async with AsyncTestClient(app) as client:
        for method, path, body, expected in ORIGINAL_CALLS:
            if body is None:
                response = await client.request(method, path)
            else:
                response = await client.request(method, path, json=body)
            assert response.status_code == expected, f"{method} {path} -> {response.status_code}: {response.text}"

        listed = (await client.get("/backends")).json()
        assert [(b["address"], b["weight"], b["alive"], b["conn_count"]) for b in listed] == [
            ("127.0.0.1:9001", 5, False, 0)
        ]

        private_redis.stop()
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable" and "redis is unreachable" in health.json()["reason"]
        down = await client.get("/backends")
        assert down.status_code == 503 and down.headers["content-type"].startswith("application/problem+json")

        private_redis.start()
        assert (await client.get("/health")).status_code == 200
        assert [b["address"] for b in (await client.get("/backends")).json()] == ["127.0.0.1:9001"]
