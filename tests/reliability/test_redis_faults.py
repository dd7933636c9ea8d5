"""Redis restarted, and Redis stopped for a while, under a steady load through two proxy replicas.

Expected: no client request fails (the proxies keep their last view of the backends), and once
Redis is back an admin change (disable a backend through the admin API) reaches every replica
within 1 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.models import Snapshot
from shared.redis_server import RedisServer
from shared.store import Store
from tests.helpers import eventually
from tests.reliability.conftest import Results, SuiteFactory, redis_down_sec
from tests.reliability.probe import propagation
from tests.reliability.stack import Stack, run_loads, start_stack

PROPAGATION_TARGET = 1.0


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    """A Redis with an append-only file: its data survives the restart, as in production."""
    server = RedisServer(persist=True).start()
    try:
        yield server
    finally:
        server.cleanup()


async def disable(stack: Stack, name: str) -> float:
    """Disable a backend through the admin API; the time the API answered (monotonic)."""
    async with stack.admin() as client:

        async def accepted() -> bool:
            try:
                response = await client.post(f"/backends/{stack.backends[name]}/disable")
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        await eventually(accepted, timeout=10, interval=0.05, message="admin API did not take the change")
        return time.monotonic()


async def scenario(
    stack: Stack, redis: RedisServer, results: Results, down_sec: float
) -> tuple[int, int, list[float], float]:
    loads = [load.start() for load in stack.loads(connections_per_port=1, max_seconds=60 + down_sec)]
    await asyncio.sleep(0.5)  # steady state before the fault
    await asyncio.to_thread(redis.stop)
    await asyncio.sleep(down_sec)  # the outage itself: its length is the point of the scenario
    await asyncio.to_thread(redis.start)
    back = time.monotonic()
    await asyncio.sleep(0.5)  # load keeps running with Redis back
    result = await run_loads(loads)
    changed = await disable(stack, "A")
    times = await propagation(stack.ports, {"B"}, changed, timeout=15)
    results.record("client requests", result.total, target="> 0", ok=result.total > 0)
    results.record("failed requests", result.failed, target="0", ok=result.failed == 0)
    results.record("p99 latency", result.p(0.99) * 1000, "ms")
    results.record("change made after Redis back", changed - back, "s")
    for i, t in enumerate(times):
        results.record(f"change reaches proxy-{i + 1}", t, "s", f"< {PROPAGATION_TARGET}", t < PROPAGATION_TARGET)
    return result.total, result.failed, times, changed - back


async def test_redis_restart(aof_redis: RedisServer, make_suite: SuiteFactory, results: Results) -> None:
    stack = await start_stack(make_suite(aof_redis.url))
    total, failed, times, _ = await scenario(stack, aof_redis, results, down_sec=0.0)
    assert total > 0
    assert failed == 0
    assert max(times) < PROPAGATION_TARGET, times


async def test_redis_down(aof_redis: RedisServer, make_suite: SuiteFactory, results: Results) -> None:
    stack = await start_stack(make_suite(aof_redis.url))
    down = redis_down_sec()
    results.record("redis down for", down, "s")
    total, failed, times, _ = await scenario(stack, aof_redis, results, down_sec=down)
    assert total > 0
    assert failed == 0
    # After a long outage too, a change reaches every replica within 1 s (each watcher's re-sync
    # backoff is bounded: test_watch_resyncs_promptly_after_outage checks that alone).
    assert max(times) < PROPAGATION_TARGET, times


WATCHERS = 8
OUTAGE_FOR_BACKOFF = 6.0


async def test_watch_resyncs_promptly_after_outage(redis_server: RedisServer, results: Results) -> None:
    """Every ``Store.watch()`` follower (what each proxy replica runs) re-syncs within 1 s of Redis returning.

    Eight followers in this process stand for eight replicas: with a bounded backoff all of them
    re-sync promptly; with an unbounded one almost surely at least one does not.
    """
    stores = [Store.from_url(redis_server.url, "watch-outage") for _ in range(WATCHERS)]
    resynced: list[list[float]] = [[] for _ in stores]
    first = [asyncio.Event() for _ in stores]

    async def follow(i: int) -> None:
        async for item in stores[i].watch():
            if isinstance(item, Snapshot):
                resynced[i].append(time.monotonic())
                first[i].set()

    tasks = [asyncio.create_task(follow(i)) for i in range(WATCHERS)]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first)), 10)
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(OUTAGE_FOR_BACKOFF)  # the outage: long enough for the backoff to grow
        await asyncio.to_thread(redis_server.start)
        back = time.monotonic()
        await eventually(lambda: all(r[-1] > back for r in resynced), timeout=15, message="followers re-synced")
        delays = [r[-1] - back for r in resynced]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in stores:
            await s.close()
    results.record(
        f"re-sync after {OUTAGE_FOR_BACKOFF:g}s outage (max of {WATCHERS})",
        max(delays),
        "s",
        "< 1.0",
        max(delays) < PROPAGATION_TARGET,
    )
    assert max(delays) < PROPAGATION_TARGET, delays


async def test_redis_restart_without_persistence(
    redis_server: RedisServer, make_suite: SuiteFactory, results: Results
) -> None:
    stack = await start_stack(make_suite(redis_server.url), admin=False)
    loads = [load.start() for load in stack.loads(connections_per_port=1, max_seconds=30)]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(redis_server.restart)  # no AOF: the state is gone
    await asyncio.sleep(3.0)  # discovery and health re-populate it meanwhile
    result = await run_loads(loads)
    results.record("client requests", result.total, target="> 0", ok=result.total > 0)
    results.record("failed requests", result.failed, target="0", ok=result.failed == 0)
    assert result.total > 0
    assert result.failed == 0, result.statuses
