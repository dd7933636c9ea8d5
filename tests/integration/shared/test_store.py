"""The Redis state model against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest

from shared.aio import cancel_and_wait
from shared.models import AlgorithmSetting, Backend, Ejection, Event, Snapshot, now
from shared.redis_server import RedisServer
from shared.replica import Replica
from shared.store import BackendExists, BackendNotFound, Fenced, OriginMismatch, Store
from tests.helpers import eventually


async def test_create_get_update_remove(store: Store) -> None:
    created = await store.create_backend(Backend(address="10.0.0.1:80", weight=3, origin="api"))
    assert created.weight == 3 and created.created_at > 0
    with pytest.raises(BackendExists):
        await store.create_backend(Backend(address="10.0.0.1:80"))
    view = await store.get_backend("10.0.0.1:80")
    assert view is not None and view.health.status == "unknown" and view.backend.origin == "api"
    updated = (await store.update_backend("10.0.0.1:80", {"weight": 7, "state": "draining"})).backend
    assert (updated.weight, updated.state, updated.created_at) == (7, "draining", created.created_at)
    with pytest.raises(BackendNotFound):
        await store.update_backend("10.0.0.9:80", {"weight": 2})
    removed = await store.remove_backend("10.0.0.1:80")
    assert removed.weight == 7
    assert await store.get_backend("10.0.0.1:80") is None
    with pytest.raises(BackendNotFound):
        await store.remove_backend("10.0.0.1:80")
    assert await store.version() == 3  # create, update, remove


async def test_unchanged_writes_do_not_bump_the_version(store: Store) -> None:
    backend = Backend(address="a:1", weight=2, origin="static")
    assert (await store.upsert_backend(backend)).outcome == "backend_added"
    assert (await store.upsert_backend(backend)).outcome == "unchanged"
    assert await store.version() == 1
    assert await store.set_health("a:1", "up") is True
    assert await store.set_health("a:1", "up") is False
    assert await store.version() == 2


async def test_upsert_limited_fields_keeps_operator_state(store: Store) -> None:
    await store.upsert_backend(Backend(address="a:1", weight=1, origin="docker"))
    await store.update_backend("a:1", {"state": "draining"})
    result = await store.upsert_backend(Backend(address="a:1", weight=5, origin="docker"), fields=("weight",))
    assert (result.backend.weight, result.backend.state) == (5, "draining")


async def test_origin_guard(store: Store) -> None:
    await store.create_backend(Backend(address="a:1", origin="api"))
    with pytest.raises(OriginMismatch):
        await store.remove_backend("a:1", guard_origin="docker")
    with pytest.raises(OriginMismatch):
        await store.upsert_backend(Backend(address="a:1", weight=9, origin="docker"), guard_origin="docker")
    view = await store.get_backend("a:1")
    assert view is not None and view.backend.weight == 1  # nothing damaged


async def test_concurrent_creates_of_one_address_admit_exactly_one(store: Store) -> None:
    async def attempt(i: int) -> bool:
        try:
            await store.create_backend(Backend(address="same:80", weight=i + 1))
            return True
        except BackendExists:
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert results.count(True) == 1
    assert await store.version() == 1


async def test_concurrent_upserts_and_updates_stay_consistent(store: Store) -> None:
    addresses = [f"10.1.0.{i}:80" for i in range(40)]
    await asyncio.gather(*(store.upsert_backend(Backend(address=a, weight=1)) for a in addresses))
    # 40 tasks each set a distinct weight on every backend; the final state must be one of them
    # per backend, and the version must count every write exactly once.
    writes = 0

    async def writer(w: int) -> None:
        nonlocal writes
        for a in addresses:
            result = await store.upsert_backend(Backend(address=a, weight=w + 2))
            if result.outcome != "unchanged":
                writes += 1

    await asyncio.gather(*(writer(w) for w in range(40)))
    snap = await store.snapshot()
    assert len(snap.backends) == 40
    assert all(2 <= v.backend.weight <= 41 for v in snap.backends.values())
    assert snap.version == 40 + writes


async def test_snapshot_is_complete(store: Store) -> None:
    await store.create_backend(Backend(address="a:1"))
    await store.create_backend(Backend(address="b:1", weight=4))
    await store.set_health("a:1", "up", "probe ok")
    await store.set_ejection("b:1", Ejection(replica="r1", until=now() + 30, reason="5xx"))
    await store.set_algorithm(AlgorithmSetting(name="least_connections"))
    snap = await store.snapshot()
    assert snap.version == 5
    assert snap.algorithm.name == "least_connections"
    assert snap.backends["a:1"].health.status == "up"
    assert snap.backends["a:1"].usable()
    assert snap.backends["b:1"].ejected() and not snap.backends["b:1"].usable(start_healthy=True)


async def test_health_up_leaves_an_ejection_alone(store: Store) -> None:
    """Two signals: a passing verdict does not end a passive ejection; it ends at its own time."""
    await store.create_backend(Backend(address="a:1"))
    await store.set_ejection("a:1", Ejection(replica="r", until=now() + 60))
    assert await store.set_health("a:1", "up") is True
    view = await store.get_backend("a:1")
    assert view is not None and view.ejected() and not view.usable()
    assert view.health.status == "up"


async def test_health_for_unknown_backend_is_refused(store: Store) -> None:
    with pytest.raises(BackendNotFound):
        await store.set_health("ghost:1", "down")
    assert await store.version() == 0


async def test_removing_a_backend_removes_its_health_and_ejection(store: Store) -> None:
    await store.create_backend(Backend(address="a:1"))
    await store.set_health("a:1", "down")
    await store.set_ejection("a:1", Ejection(replica="r", until=now() + 60))
    await store.remove_backend("a:1")
    await store.create_backend(Backend(address="a:1"))
    view = await store.get_backend("a:1")
    assert view is not None and view.health.status == "unknown" and view.ejection is None


async def _collect(store: Store, into: list[Snapshot | Event], started: asyncio.Event) -> None:
    async for item in store.watch(resync_interval=0.2):
        into.append(item)
        started.set()


@contextlib.asynccontextmanager
async def watching(store: Store) -> AsyncIterator[list[Snapshot | Event]]:
    items: list[Snapshot | Event] = []
    started = asyncio.Event()
    task = asyncio.create_task(_collect(store, items, started))
    await asyncio.wait_for(started.wait(), 5)
    try:
        yield items
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_yields_snapshot_then_ordered_events(store: Store) -> None:
    await store.create_backend(Backend(address="a:1"))
    async with watching(store) as items:
        assert isinstance(items[0], Snapshot) and set(items[0].backends) == {"a:1"}
        await store.create_backend(Backend(address="b:1"))
        await store.update_backend("b:1", {"weight": 3})
        await store.set_health("b:1", "up")
        await store.set_algorithm(AlgorithmSetting(name="ip_hash"))
        await store.remove_backend("a:1")
        await eventually(lambda: len(items) >= 6, message="events arrive")
        events = items[1:]
        assert all(isinstance(e, Event) for e in events)
        assert [e.kind for e in events] == [  # type: ignore[union-attr]
            "backend_added",
            "backend_updated",
            "health",
            "algorithm",
            "backend_removed",
        ]
        assert [e.version for e in events] == [2, 3, 4, 5, 6]
        assert events[1].backend is not None and events[1].backend.weight == 3  # type: ignore[union-attr]


async def test_watch_resyncs_on_a_version_gap(store: Store) -> None:
    async with watching(store) as items:
        # A change whose event is lost: written, version bumped, but nothing published.
        await store.redis.hset(store.keys.backends, "lost:1", msgspec.json.encode(Backend(address="lost:1")))
        await store.redis.incr(store.keys.version)
        # The next event arrives with a version one too far ahead -> full re-read.
        await store.create_backend(Backend(address="b:1"))
        snap = await eventually(
            lambda: next((i for i in items[1:] if isinstance(i, Snapshot)), None), message="a re-sync"
        )
        assert snap is not None and set(snap.backends) == {"lost:1", "b:1"}


async def test_watch_resyncs_when_the_version_moves_silently(store: Store) -> None:
    async with watching(store) as items:
        await store.redis.hset(store.keys.backends, "quiet:1", msgspec.json.encode(Backend(address="quiet:1")))
        await store.redis.incr(store.keys.version)
        snap = await eventually(
            lambda: next((i for i in items[1:] if isinstance(i, Snapshot)), None),
            message="a periodic re-sync",
        )
        assert snap is not None and "quiet:1" in snap.backends


async def test_watch_resyncs_after_redis_restart(private_redis: RedisServer, namespace: str) -> None:
    store = Store.from_url(private_redis.url, namespace)
    writer = Store.from_url(private_redis.url, namespace)
    try:
        await writer.create_backend(Backend(address="a:1"))
        async with watching(store) as items:
            assert isinstance(items[0], Snapshot) and set(items[0].backends) == {"a:1"}
            private_redis.stop()
            private_redis.start()
            await eventually(writer.ping, message="redis back")
            await writer.create_backend(Backend(address="after:1"))

            def resynced() -> Snapshot | None:
                for item in items[1:]:
                    if isinstance(item, Snapshot) and "after:1" in item.backends:
                        return item
                    if isinstance(item, Event) and item.address == "after:1":
                        return items[0]  # type: ignore[return-value]
                return None

            await eventually(resynced, timeout=10, message="re-sync after restart")
            assert any(isinstance(i, Snapshot) for i in items[1:]), "a fresh snapshot after reconnect"
    finally:
        await store.close()
        await writer.close()


async def test_leases_and_fencing(store: Store) -> None:
    first = await store.acquire_lease("health", "r1", ttl=5)
    assert first is not None
    assert await store.acquire_lease("health", "r2", ttl=5) is None
    renewed = await store.acquire_lease("health", "r1", ttl=5, held=first)
    assert renewed == first
    await store.create_backend(Backend(address="a:1"))
    assert await store.set_health("a:1", "up", fence=first)
    await store.redis.delete(store.keys.lease("health"))  # the lease expires
    second = await store.acquire_lease("health", "r2", ttl=5)
    assert second is not None and second.token > first.token
    with pytest.raises(Fenced):
        await store.set_health("a:1", "down", fence=first)  # the old holder is refused
    view = await store.get_backend("a:1")
    assert view is not None and view.health.status == "up"
    assert await store.release_lease(first) is False
    assert await store.release_lease(second) is True


async def test_concurrent_counter_updates_are_exact(store: Store) -> None:
    replicas = [Replica(store, "proxy", ttl=5, heartbeat=1, flush_interval=0.05) for _ in range(3)]

    async def traffic(replica: Replica, seed: int) -> None:
        for i in range(200):
            address = f"b{(seed + i) % 4}:80"
            replica.add(address, +1)
            if i % 7 == 0:
                await replica.push()
            if i % 3 != 0:
                replica.add(address, -1)
            await asyncio.sleep(0)

    await asyncio.gather(*(traffic(r, n) for n, r in enumerate(replicas)))
    for r in replicas:
        await r.push()
    expected: dict[str, int] = {}
    for r in replicas:
        for addr, count in r.local.items():
            expected[addr] = expected.get(addr, 0) + count
    assert await store.global_inflight() == expected
    assert sum(expected.values()) == 3 * len([i for i in range(200) if i % 3 == 0])
    mine = replicas[0]
    others = await store.global_inflight(exclude=mine.id)
    assert all(others.get(a, 0) + mine.local.get(a, 0) == expected[a] for a in expected)


async def test_a_dead_replicas_counters_expire(store: Store) -> None:
    alive = Replica(store, "proxy", ttl=5, heartbeat=1, flush_interval=0.05)
    dead = Replica(store, "proxy", ttl=0.6, heartbeat=0.2, flush_interval=0.05)
    for _ in range(50):
        dead.add("b:1", +1)
    alive.add("b:1", +2)
    await dead.push()
    await alive.push()
    assert (await store.global_inflight())["b:1"] == 52
    # `dead` stops pushing (as if SIGKILLed): its 50 leave the sum within its TTL.
    await eventually(lambda: _count(store, "b:1", 2), timeout=3, message="dead replica's counts expire")
    assert [r.id for r in await store.replicas()] == [alive.id]


async def _count(store: Store, address: str, expected: int) -> bool:
    return (await store.global_inflight()).get(address, 0) == expected


async def test_counters_recover_after_the_hash_expired(store: Store) -> None:
    replica = Replica(store, "proxy", ttl=5, heartbeat=1)
    replica.add("b:1", +3)
    await replica.push()
    await store.redis.delete(store.keys.inflight(replica.id))  # lost (e.g. a Redis restart without data)
    replica.add("b:1", -1)
    await replica.push()  # deltas cannot apply to nothing: the absolute count is re-sent
    assert (await store.global_inflight())["b:1"] == 2


async def test_a_replayed_batch_is_not_applied_twice(store: Store) -> None:
    replica = Replica(store, "proxy", ttl=5, heartbeat=1)
    await replica.push()
    await store.push_counters(replica.info, 10, {"b:1": 5}, {}, 5)
    await store.push_counters(replica.info, 10, {"b:1": 5}, {}, 5)  # retried after a lost reply
    assert (await store.global_inflight())["b:1"] == 5


async def test_zero_entries_left_by_the_hot_path_are_pushed_as_nothing(store: Store) -> None:
    """The proxy leaves a finished backend's count at 0 in ``local``; the heartbeat task drops it,
    and a request that came and went between two pushes is no change (no Redis round trip)."""
    replica = Replica(store, "proxy", ttl=5, heartbeat=30, flush_interval=0.02)
    replica.local["b:1"] = 2
    task = asyncio.create_task(replica.run())
    try:
        await eventually(lambda: _count(store, "b:1", 2), message="first push")
        replica.local["b:1"] = 0
        await eventually(lambda: _count(store, "b:1", 0), message="the drop to 0 is pushed")
        await eventually(lambda: "b:1" not in replica.local, message="the zero entry is dropped")
        pushes = replica._seq
        for _ in range(5):  # requests that come and go between pushes: zero entries each time
            replica.local["c:1"] = 0
            replica.pushed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(replica.pushed.wait(), 0.1)  # (5 flush intervals)
        assert replica._seq == pushes and "c:1" not in replica.local
    finally:
        await cancel_and_wait([task])


class CountedTotals:
    """A TotalsSource (what the proxy is to its replica): finished requests by key."""

    def __init__(self) -> None:
        self.pending: Counter[str] = Counter()

    def has_totals(self) -> bool:
        return bool(self.pending)

    def take_totals(self) -> Counter[str]:
        taken, self.pending = self.pending, Counter()
        return taken


async def test_request_totals_are_exact_and_expire_with_the_replica(store: Store) -> None:
    replica = Replica(store, "proxy", ttl=0.8, heartbeat=0.2, flush_interval=0.05)
    replica.totals_source = counted = CountedTotals()
    counted.pending.update({"b:1|2xx": 5, "b:1|5xx": 1})
    await replica.push()
    counted.pending["b:1|2xx"] += 1
    await replica.push()
    await store.push_counters(replica.info, replica._seq, {}, {}, 5, total_deltas={"b:1|2xx": 100})  # a replay
    [seen] = await store.replicas()
    assert seen.totals == {"b:1|2xx": 6, "b:1|5xx": 1}
    await store.redis.delete(store.keys.inflight(replica.id))  # lost: the next push re-sends absolutes
    counted.pending["b:1|2xx"] += 1
    await replica.push()
    [seen] = await store.replicas()
    assert seen.totals == {"b:1|2xx": 7, "b:1|5xx": 1}
    await eventually(lambda: _no_replicas(store), timeout=3, message="totals expire with the replica")


async def test_totals_of_a_backend_that_left_are_deleted(store: Store) -> None:
    """Replica.forget: the totals of a backend that left go, locally and in Redis (with the next
    push), also after a push that had to resend everything."""
    replica = Replica(store, "proxy", ttl=5, heartbeat=0.2, flush_interval=0.05)
    replica.totals_source = counted = CountedTotals()
    counted.pending.update({"b:1|2xx": 5, "b:1|5xx": 1, "b:2|2xx": 3, "b:10|2xx": 2})
    await replica.push()
    replica.forget("b:1")
    assert dict(replica.totals) == {"b:2|2xx": 3, "b:10|2xx": 2}
    counted.pending["b:2|2xx"] += 1
    await replica.push()
    [seen] = await store.replicas()
    assert seen.totals == {"b:2|2xx": 4, "b:10|2xx": 2}
    replica.forget("b:2")
    await store.redis.delete(store.keys.inflight(replica.id))  # lost: the next push re-sends absolutes
    await replica.push()
    [seen] = await store.replicas()
    assert seen.totals == {"b:10|2xx": 2}
    assert replica._total_keys == {"b:10": ["b:10|2xx"]}


async def _no_replicas(store: Store) -> bool:
    return not await store.replicas() and not await store.redis.exists(store.keys.totals("x"))


async def test_a_replica_survives_redis_refusing_writes(private_redis: RedisServer, namespace: str) -> None:
    store = Store.from_url(private_redis.url, namespace)
    try:
        replica = Replica(store, "proxy", ttl=5, heartbeat=0.05, flush_interval=0.02)
        replica.add("b:1", +2)
        task = asyncio.create_task(replica.run())
        await eventually(lambda: _count(store, "b:1", 2), message="first push")
        await store.redis.config_set("maxmemory", "1")  # every write now fails with OOM
        await store.redis.config_set("maxmemory-policy", "noeviction")
        replica.add("b:1", +1)
        await eventually(lambda: not replica.reachable, message="a push refused by Redis")
        assert await store.redis.hget(store.keys.inflight(replica.id), "b:1") == b"2", "the write was refused"
        refused = replica.failed_pushes
        await eventually(lambda: replica.failed_pushes >= refused + 2, message="further refused pushes")
        assert not task.done(), "the heartbeat survived the refused writes"
        await store.redis.config_set("maxmemory", "0")
        await eventually(lambda: _count(store, "b:1", 3), message="counts exact once writes work again")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await store.close()


async def test_replica_infos_are_the_live_replicas_without_their_counters(store: Store) -> None:
    proxy = Replica(store, "proxy", ttl=5, heartbeat=0.2, replica_id="p1")
    health = Replica(store, "health", ttl=5, heartbeat=0.2, replica_id="h1")
    proxy.add("b:1", 3)
    await proxy.push()
    await health.push()
    infos = await store.replica_infos()
    assert sorted(r.id for r in infos) == ["h1", "p1"]
    assert all(r.inflight == {} and r.totals == {} for r in infos)  # (not read)
    assert [r.id for r in await store.replica_infos(service="health")] == ["h1"]
    await store.deregister("h1")
    assert [r.id for r in await store.replica_infos()] == ["p1"]
