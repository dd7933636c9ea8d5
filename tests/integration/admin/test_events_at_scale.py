"""Issue 15 item 2: 300 event streams against a real admin (uvicorn) and a real Redis.

The streams share the admin's one subscription (no Redis connection each), the cap holds exactly
however many open at once, and an operator's authenticated write goes through while they are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import redis.asyncio as aioredis

from services.admin.context import context_of
from shared.store import Store
from tests.helpers import eventually
from tests.integration.admin.server import ServedAdmin, admin_config

TOKEN = "streams-t0ken"
STREAMS = 300


async def redis_clients(url: str) -> int:
    raw = aioredis.from_url(url)
    try:
        return int((await raw.info("clients"))["connected_clients"])
    finally:
        await raw.aclose()


@contextlib.asynccontextmanager
async def open_streams(base: str, n: int) -> AsyncIterator[list[int]]:
    """Open ``n`` streams at once; yields their statuses while the accepted ones stay open (each has
    read the first line of its snapshot: it runs)."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with (
        httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        readers: list[AsyncIterator[str]] = []  # kept: a reader dropped would close its stream

        async def one() -> int:
            response = await stack.enter_async_context(client.stream("GET", "/events"))
            if response.status_code == 200:
                readers.append(response.aiter_lines())
                line = await anext(readers[-1])
                assert line.startswith("id: "), line
            return response.status_code

        yield list(await asyncio.gather(*(one() for _ in range(n))))


async def test_300_streams_share_one_subscription_and_writes_go_through(
    redis_url: str, namespace: str, store: Store
) -> None:
    with ServedAdmin(admin_config(redis_url, namespace, token=TOKEN)) as admin:
        ctx = context_of(admin.app.state)
        await eventually(lambda: ctx.snapshot.synced, message="the admin's snapshot is not synced")
        before = await redis_clients(redis_url)
        async with open_streams(admin.url, STREAMS) as statuses:
            assert statuses == [200] * STREAMS
            assert ctx.event_streams == STREAMS
            during = await redis_clients(redis_url)
            subscribers = (await store.redis.pubsub_numsub(store.keys.events))[0][1]
            async with httpx.AsyncClient(base_url=admin.url, timeout=10) as operator:
                started = time.perf_counter()
                r = await operator.post(
                    "/backends",
                    json={"address": "10.9.9.9:80"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                post_ms = (time.perf_counter() - started) * 1000
        await eventually(lambda: ctx.event_streams == 0, message="streams still counted after they closed")
    print(f"\n300 streams: redis clients {before} -> {during}, one subscription: {subscribers}, POST {post_ms:.1f} ms")
    assert r.status_code == 201, r.text
    assert subscribers == 1  # the admin's one watch; the streams hold no subscription
    assert during - before <= 1  # (at most one more pooled connection, for the write)
    assert post_ms < 1000


async def test_the_cap_holds_exactly_when_streams_open_at_once(redis_url: str, namespace: str) -> None:
    with ServedAdmin(admin_config(redis_url, namespace, max_event_streams=256)) as admin:
        ctx = context_of(admin.app.state)
        await eventually(lambda: ctx.snapshot.synced, message="the admin's snapshot is not synced")
        async with open_streams(admin.url, STREAMS) as statuses:
            assert statuses.count(200) == 256
            assert statuses.count(503) == STREAMS - 256
            assert ctx.event_streams == 256
            async with httpx.AsyncClient(base_url=admin.url, timeout=10) as operator:
                r = await operator.post("/backends", json={"address": "10.9.9.8:80"})
                refused = await operator.get("/events")
        assert r.status_code == 201, r.text
        assert refused.status_code == 503 and refused.headers["content-type"].startswith("application/problem+json")
        await eventually(lambda: ctx.event_streams == 0, message="streams still counted after they closed")
