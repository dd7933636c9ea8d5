"""GET /events over a real HTTP connection (uvicorn): snapshot first, then each change; clean disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.admin.context import context_of
from shared.config import OutlierConfig, ProbeConfig, RouteConfig
from shared.config.durations import Seconds
from shared.models import Backend, PoolSetting, RouteTableSetting
from shared.redis_server import RedisServer
from shared.store import Store
from tests.helpers import eventually
from tests.integration.admin.server import ServedAdmin, admin_config


@pytest.fixture
def served(redis_url: str, namespace: str) -> Iterator[ServedAdmin]:
    with ServedAdmin(admin_config(redis_url, namespace)) as admin:
        yield admin


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """Parse the text/event-stream into {event, id, data} dicts (comments skipped)."""
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if current:
                yield current
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")


async def subscribers(store: Store) -> int:
    counts = await store.redis.pubsub_numsub(store.keys.events)
    return int(counts[0][1])


async def test_snapshot_then_changes_made_after_subscribing(served: ServedAdmin, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80", weight=2))
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=10) as client,
        client.stream("GET", "/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        first = await anext(events)
        assert first["event"] == "snapshot"
        snap = json.loads(first["data"])
        assert int(first["id"]) == snap["version"] == await store.version()
        assert [b["address"] for b in snap["backends"]] == ["10.0.0.1:80"]

        await store.update_backend("10.0.0.1:80", {"state": "draining"})
        await store.create_backend(Backend(address="10.0.0.2:80"))
        await store.set_health("10.0.0.2:80", "up")
        seen = [await anext(events) for _ in range(3)]
        assert [e["event"] for e in seen] == ["backend_updated", "backend_added", "health"]
        assert [int(e["id"]) for e in seen] == [snap["version"] + 1, snap["version"] + 2, snap["version"] + 3]
        assert json.loads(seen[0]["data"])["backend"]["state"] == "draining"
        assert json.loads(seen[2]["data"])["health"]["status"] == "up"
        assert context_of(served.app.state).event_streams == 1
        # The stream reads the admin's one watch: no Redis subscription of its own.
        assert await subscribers(store) == 1
    # The client went away: its place in the cap is free again.
    await eventually(lambda: context_of(served.app.state).event_streams == 0, message="event stream still open")
    assert await subscribers(store) == 1


async def test_many_clients_come_and_go_without_leaks(served: ServedAdmin, store: Store) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        for _ in range(5):
            async with client.stream("GET", "/events") as response:
                first = await anext(sse_events(response))
                assert first["event"] == "snapshot"
                assert await subscribers(store) == 1
            await eventually(
                lambda: context_of(served.app.state).event_streams == 0, timeout=5, message="stream leaked"
            )


async def test_server_stop_ends_open_streams(redis_url: str, namespace: str, store: Store) -> None:
    admin = ServedAdmin(admin_config(redis_url, namespace))
    with admin:
        async with (
            httpx.AsyncClient(base_url=admin.url, timeout=10) as client,
            client.stream("GET", "/events") as response,
        ):
            events = sse_events(response)
            assert (await anext(events))["event"] == "snapshot"
            admin.__exit__(None, None, None)  # joins the server thread: the stream must not hold it
            rest = [e async for e in events]
            assert rest == []
    await eventually(lambda: _no_watch(store), timeout=5, message="subscription leaked after stop")


async def _no_watch(store: Store) -> bool:
    return await subscribers(store) == 0


async def test_stream_survives_a_redis_restart(private_redis: RedisServer) -> None:
    with ServedAdmin(admin_config(private_redis.url, "events-restart")) as admin:
        async with (
            httpx.AsyncClient(base_url=admin.url, timeout=20) as client,
            client.stream("GET", "/events") as response,
        ):
            events = sse_events(response)
            assert (await anext(events))["event"] == "snapshot"
            private_redis.restart()
            writer = Store.from_url(private_redis.url, "events-restart")
            try:
                await writer.create_backend(Backend(address="10.0.0.3:80"))
                seen = False
                async with asyncio.timeout(15):
                    # Either the re-sync snapshot already holds it, or the event follows.
                    async for event in events:
                        data = json.loads(event["data"])
                        if event["event"] == "backend_added":
                            seen = data["address"] == "10.0.0.3:80"
                        elif event["event"] == "snapshot":
                            seen = any(b["address"] == "10.0.0.3:80" for b in data["backends"])
                        if seen:
                            break
                assert seen, "the stream ended without showing the change made after the restart"
            finally:
                await writer.close()


async def test_pools_and_routes_are_in_the_snapshot_and_the_stream(served: ServedAdmin, store: Store) -> None:
    await store.set_pool(PoolSetting(name="api", health_check=ProbeConfig(type="http")), mode="create")
    await store.create_backend(Backend(address="10.0.0.1:80", pool="api"))
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=10) as client,
        client.stream("GET", "/events") as response,
    ):
        events = sse_events(response)
        snap = json.loads((await anext(events))["data"])
        assert [(p["name"], p["backends"]) for p in snap["pools"]] == [("default", 0), ("api", 1)]
        assert snap["pools"][1]["health_check"]["type"] == "http" and snap["routes"] is None
        assert snap["backends"][0]["pool"] == "api"

        await store.set_pool(PoolSetting(name="web", outlier=OutlierConfig(base_ejection_sec=Seconds(1.5))))
        await store.set_routes(RouteTableSetting(routes=[RouteConfig(name="r", pool="web")], default_pool="api"))
        await store.set_routes(RouteTableSetting())
        await store.remove_pool("web")
        seen = [await anext(events) for _ in range(4)]
        assert [e["event"] for e in seen] == ["pool_set", "routes", "routes", "pool_removed"]
        pool_set = json.loads(seen[0]["data"])
        assert pool_set["name"] == "web" and pool_set["pool"]["outlier"]["base_ejection_sec"] == 1.5
        assert json.loads(seen[1]["data"])["routes"]["routes"][0]["pool"] == "web"
        assert json.loads(seen[3]["data"])["name"] == "web"
