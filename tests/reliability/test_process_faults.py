"""Service processes SIGKILLed under load: a proxy replica holding connections, a health replica
(holding shards of the backends) and the discovery leader.

Expected: the other proxy replica serves on without a failure and the killed replica's in-flight
counters leave the global sum within the replica TTL; a standby takes the discovery lease, and the
other health replica every shard, within the lease TTL (plus two rounds for the shards), and no
backend flaps meanwhile (no health or backend event is published).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

import msgspec

from shared.models import Event
from shared.redis_server import RedisServer
from shared.store import Store
from tests.helpers import eventually
from tests.reliability.conftest import Results, SuiteFactory
from tests.reliability.load import held_request
from tests.reliability.stack import run_loads, start_stack
from tests.reliability.suite import Proc

REPLICA_TTL = 1.5
HEARTBEAT = 0.25
LEASE_TTL = 1.5


async def test_proxy_replica_sigkilled(
    redis_server: RedisServer, make_suite: SuiteFactory, suite_store: Store, results: Results
) -> None:
    suite = make_suite(redis_server.url)
    stack = await start_stack(suite, backends=2, proxies=2, admin=False, slow_backends=True)
    victim = next(p for p in suite.procs if p.name == "proxy-1")
    held = [asyncio.create_task(held_request(suite.proxy_ports["proxy-1"], 30)) for _ in range(4)]
    survivor_load = stack.loads(connections_per_port=2, max_seconds=30)[1].start()
    try:

        async def victim_inflight() -> int:
            replicas = {r.id: r for r in await suite_store.replicas("proxy")}
            return sum(replicas["proxy-1"].inflight.values()) if "proxy-1" in replicas else -1

        async def held_counted() -> bool:
            return await victim_inflight() >= 4

        await eventually(
            held_counted, timeout=10, interval=0.05, message="held requests never showed in the global counters"
        )
        before = sum((await suite_store.global_inflight()).values())
        killed = time.monotonic()
        await asyncio.to_thread(victim.kill)
        gone_after = None
        while time.monotonic() - killed < 10:
            ids = {r.id for r in await suite_store.replicas()}
            if "proxy-1" not in ids and sum((await suite_store.global_inflight()).values()) < 4:
                gone_after = time.monotonic() - killed
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # the survivor goes on serving
    finally:
        result = await run_loads([survivor_load])
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)

    target = REPLICA_TTL + HEARTBEAT
    results.record("global in-flight before kill", before)
    results.record("survivor requests", result.total, target="> 0", ok=result.total > 0)
    results.record("survivor failed requests", result.failed, target="0", ok=result.failed == 0)
    results.record("killed replica's counters gone after", gone_after if gone_after is not None else "never", "s",
                   f"< {target:g} (TTL + heartbeat)", gone_after is not None and gone_after < target)  # fmt: skip
    assert before >= 4
    assert result.total > 0 and result.failed == 0, result.errors
    assert gone_after is not None and gone_after < target


class EventTap:
    """Every event published on the store's channel, from a raw subscription."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.events: list[Event] = []
        self.pubsub: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> EventTap:
        self.pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
        await self.pubsub.subscribe(self.store.keys.events)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        decoder = msgspec.json.Decoder(Event)
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is not None and message.get("type") == "message":
                self.events.append(decoder.decode(message["data"]))

    async def stop(self) -> list[Event]:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.pubsub.aclose()
        return self.events


async def take_over(store: Store, lease: str, procs: dict[str, Proc]) -> tuple[str, str, float]:
    """Kill the holder of ``lease``; the new holder and the seconds until it held the lease."""
    holder = await store.lease_holder(lease)
    assert holder is not None, f"nobody holds the {lease} lease"
    leader = holder.rsplit(":", 1)[0]
    killed = time.monotonic()
    await asyncio.to_thread(procs[leader].kill)
    while time.monotonic() - killed < 10:
        now = await store.lease_holder(lease)
        if now is not None and now.rsplit(":", 1)[0] != leader:
            return leader, now.rsplit(":", 1)[0], time.monotonic() - killed
        await asyncio.sleep(0.01)
    raise AssertionError(f"no standby took the {lease} lease within 10 s")


async def take_over_shards(store: Store, procs: dict[str, Proc]) -> tuple[str, str, float]:
    """Kill the health replica holding shard 0; the survivor and the seconds until it held every shard."""
    from services.health.service import SHARDS, shard_lease

    async def holders() -> list[str | None]:
        values = [await store.lease_holder(shard_lease(s)) for s in range(SHARDS)]
        return [v.rsplit(":", 1)[0] if v is not None else None for v in values]

    victim = (await holders())[0]
    assert victim is not None, "nobody holds health shard 0"
    killed = time.monotonic()
    await asyncio.to_thread(procs[victim].kill)
    while time.monotonic() - killed < 10:
        now = await holders()
        if None not in now and len(set(now)) == 1 and now[0] != victim:
            return victim, str(now[0]), time.monotonic() - killed
        await asyncio.sleep(0.01)
    raise AssertionError("no health replica took every shard within 10 s")


async def test_leaders_killed(
    redis_server: RedisServer, make_suite: SuiteFactory, suite_store: Store, results: Results
) -> None:
    suite = make_suite(redis_server.url)
    stack = await start_stack(suite, backends=2, proxies=1, health=2, discovery=2, admin=False)
    procs = {p.name: p for p in suite.procs}
    await eventually(
        functools.partial(suite_store.lease_holder, "discovery"), timeout=10, interval=0.05, message="discovery leader"
    )
    await eventually(
        functools.partial(suite_store.lease_holder, "health:0"), timeout=10, interval=0.05, message="health shards"
    )
    tap = await EventTap(suite_store).start()
    load = stack.loads(connections_per_port=2, max_seconds=30)[0].start()
    took: dict[str, tuple[str, str, float]] = {}
    try:
        await asyncio.sleep(0.5)
        took["health"] = await take_over_shards(suite_store, procs)
        took["discovery"] = await take_over(suite_store, "discovery", procs)
        # The new leaders have probed and reconciled for a while: any flap would have been published.
        await asyncio.sleep(LEASE_TTL + 1.0)
    finally:
        result = await run_loads([load])
        events = await tap.stop()

    flaps = [e for e in events if e.kind in ("health", "backend_added", "backend_removed", "backend_updated")]
    results.record("client requests", result.total, target="> 0", ok=result.total > 0)
    results.record("failed requests", result.failed, target="0", ok=result.failed == 0)
    for lease, (old, new, seconds) in took.items():
        bound = LEASE_TTL + 0.5 + (2 * min(LEASE_TTL / 10, 1.0) if lease == "health" else 0.0)
        what = "shards" if lease == "health" else "lease"
        results.record(f"{lease} {what} {old} -> {new}", seconds, "s", f"< {bound:g}", seconds < bound)
    results.record("health/backend events meanwhile", len(flaps), target="0", ok=not flaps)
    assert result.total > 0 and result.failed == 0, result.errors
    for lease, (old, new, seconds) in took.items():
        assert new != old
        assert seconds < LEASE_TTL + 0.5 + (2 * min(LEASE_TTL / 10, 1.0) if lease == "health" else 0.0)
    assert not flaps, flaps


async def test_proxy_replica_drained(
    redis_server: RedisServer, make_suite: SuiteFactory, suite_store: Store, results: Results
) -> None:
    """Two replicas on one port (SO_REUSEPORT, as `gobalancer up --proxies 2`): SIGTERM one under load.

    Its keep-alive clients get ``Connection: close`` and reconnect to the other; nobody sees a failure,
    and it deregisters at once (no TTL wait).
    """
    suite = make_suite(redis_server.url)
    stack = await start_stack(suite, backends=2, proxies=0, admin=False)
    first = suite.start("proxy", "proxy-1")
    suite.start("proxy", "proxy-2")
    suite.proxy_ports["shared"] = suite.proxy_port
    await stack.ready()

    async def both_registered() -> bool:
        return len(await suite_store.replicas("proxy")) >= 2

    await eventually(both_registered, timeout=10, interval=0.05, message="both proxy replicas registered")
    load = stack.loads(connections_per_port=4, max_seconds=30)[0].start()
    await asyncio.sleep(1.0)
    stopping = time.monotonic()
    code = await asyncio.to_thread(first.stop)
    stopped = time.monotonic() - stopping
    ids = {r.id for r in await suite_store.replicas("proxy")}
    await asyncio.sleep(1.0)
    result = await run_loads([load])
    results.record("client requests", result.total, target="> 0", ok=result.total > 0)
    results.record("failed requests", result.failed, target="0", ok=result.failed == 0)
    results.record("SIGTERM to exit", stopped, "s")
    results.record("deregistered on exit", "proxy-1" not in ids, target="True", ok="proxy-1" not in ids)
    assert code == 0
    assert result.total > 0 and result.failed == 0, result.errors
    assert "proxy-1" not in ids
