"""The watch's full re-sync at scale, against a real redis-server: read in chunks, it converges to the
store's exact state under concurrent writes, and a re-sync of 100,000 backends never stalls the event
loop of the proxy or the admin that consumes it for 20 ms, garbage collector on."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import msgspec
import pytest

from services.admin.snapshot import AdminSnapshot
from services.proxy.store_balancer import StoreBalancer
from shared.aio import cancel_and_wait
from shared.config import Config
from shared.gc_tuning import tune_gc
from shared.mirror import Mirror
from shared.models import AlgorithmSetting, Backend, Ejection, Health, Snapshot, now
from shared.replica import Replica
from shared.store import BackendExists, BackendNotFound, Store
from shared.store.store import _PubSub
from tests.helpers import LoopStalls, eventually

STALL_LIMIT = 0.020  # seconds of CPU between two ticks of the loop
LARGE = 100_000


def address(i: int) -> str:
    return f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}:80"


async def fill(store: Store, n: int, *, health_every: int = 1, ejection_every: int = 0) -> None:
    """``n`` backends written straight into the hashes (as the scripts write them), then one version."""
    encode = msgspec.json.encode
    k, at = store.keys, now()
    pipe = store.redis.pipeline(transaction=False)
    for i in range(n):
        a = address(i)
        backend = Backend(address=a, weight=1 + i % 5, origin="kubernetes", created_at=at, updated_at=at)
        pipe.hset(k.backends, a, encode(backend))
        if health_every and i % health_every == 0:
            pipe.hset(k.health, a, encode(Health(status="up" if i % 7 else "down", changed_at=at, reason="200")))
        if ejection_every and i % ejection_every == 0:
            pipe.hset(k.ejections, a, encode(Ejection(replica="r", until=at + 600, reason="5xx")))
        if i % 5000 == 4999:
            await pipe.execute()
    await pipe.execute()
    await store.redis.incrby(k.version, 7)


async def lose_an_event(store: Store, n: int = 1) -> None:
    """A change whose event is lost (written and versioned, not published), then one that is published:
    a watcher sees a gap in the versions and reads the whole state again."""
    k = store.keys
    await store.redis.hset(k.backends, f"lost:{n}", msgspec.json.encode(Backend(address=f"lost:{n}")))
    await store.redis.incr(k.version)
    await store.create_backend(Backend(address=f"after-the-gap:{n}"))


# -- convergence ------------------------------------------------------------------------------------


class Interleaved:
    """Writes made between the chunks of a re-sync: wraps the store's chunk script so that after each
    chunk (the last one included) ``writes`` changes of every kind go to Redis through another client,
    before the reader gets the loop back. Real scripts, real events: only the timing is forced, to
    the worst moments (backends already read and still to read change)."""

    def __init__(self, reader: Store, writer: Store, writes: int, pool: int, seed: int) -> None:
        self.writer, self.writes, self.pool = writer, writes, pool
        self.rng = random.Random(seed)
        self.made = 0
        self.chunks = 0
        self._scan = reader._scan_views
        reader._scan_views = self  # type: ignore[assignment]

    async def __call__(self, *, keys: list[str], args: list[str | int]) -> object:
        reply = await self._scan(keys=keys, args=args)
        self.chunks += 1
        for _ in range(self.writes):
            self.made += await change(self.writer, self.rng, self.pool)
        return reply


async def change(store: Store, rng: random.Random, pool: int) -> int:
    """One random change of any kind to one of ``pool`` addresses; 1 when it was made."""
    a = address(rng.randrange(pool))
    kind = rng.randrange(7)
    try:
        if kind == 0:
            await store.remove_backend(a)
        elif kind == 1:
            await store.upsert_backend(Backend(address=a, weight=rng.randint(1, 9), origin="kubernetes"))
        elif kind == 2:
            await store.update_backend(a, {"state": rng.choice(["enabled", "draining", "disabled"])})
        elif kind == 3:
            return int(await store.set_health(a, rng.choice(["up", "down"]), "probe"))
        elif kind == 4:
            return int(await store.set_ejection(a, Ejection(replica="r", until=now() + 60)))
        elif kind == 5:
            return int(await store.set_ejection(a, None))
        else:
            name = rng.choice(["round_robin", "least_connections"])
            return int(await store.set_algorithm(AlgorithmSetting(name=name)))  # type: ignore[arg-type]
    except (BackendNotFound, BackendExists):
        return 0
    return 1


@pytest.fixture
async def writer(redis_url: str, namespace: str) -> AsyncIterator[Store]:
    s = Store.from_url(redis_url, namespace)
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_chunked_snapshot_is_the_exact_state_at_its_version(store: Store, writer: Store, seed: int) -> None:
    """3,000 backends read 100 at a time while, after every chunk, changes of every kind land on backends
    already read, still to read, and new ones: the snapshot built from the chunks and the events replayed
    over them is, field for field, what an atomic read of the store holds at its version."""
    await fill(store, 3000, health_every=2, ejection_every=9)
    pubsub = _PubSub(store.redis.connection_pool, ignore_subscribe_messages=True)
    await pubsub.subscribe(store.keys.events)
    try:
        interleaved = Interleaved(store, writer, writes=4, pool=3300, seed=seed)
        before = await store.version()
        snap = await store._chunked_snapshot(pubsub, chunk=100)
        assert snap is not None, "no message was lost: the chunked read converges"
        truth = await store.snapshot()  # (nothing writes any more)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert interleaved.chunks >= 25 and interleaved.made > 50
    assert snap.version == truth.version > before
    assert snap.algorithm == truth.algorithm
    assert snap.backends.keys() == truth.backends.keys()
    differ = [a for a, view in truth.backends.items() if snap.backends[a] != view]
    assert differ == [], f"{len(differ)} backends differ, e.g. {differ[:3]}"


async def test_the_watch_converges_while_writers_run_and_events_are_lost(store: Store, writer: Store) -> None:
    """The whole watch: four writers change everything while events go missing now and then (each loss a
    chunked re-sync under fire). Once the writers stop, a mirror fed by the watch holds exactly the
    store's state."""
    await fill(store, 5000, health_every=3, ejection_every=11)
    mirror = Mirror()
    resyncs = 0

    async def follow() -> None:
        nonlocal resyncs
        async for item in store.watch():
            mirror.apply(item)
            resyncs += isinstance(item, Snapshot)

    stop = asyncio.Event()

    async def write(seed: int) -> int:
        rng, made = random.Random(seed), 0
        while not stop.is_set():
            made += await change(writer, rng, 5500)
        return made

    following = asyncio.create_task(follow())
    await eventually(lambda: mirror.version >= 0, message="the first snapshot")
    writers = [asyncio.create_task(write(seed)) for seed in range(4)]
    try:
        for n in range(3):
            await asyncio.sleep(0.3)
            before = resyncs
            await lose_an_event(writer, n)
            await eventually(lambda: resyncs > before, timeout=20, message="a re-sync after the lost event")  # noqa: B023
        stop.set()
        made = sum(await asyncio.gather(*writers))
        final = await store.version()
        await eventually(lambda: mirror.version >= final, timeout=20, message="the watch catches up")
        truth = await store.snapshot()
    finally:
        stop.set()
        await cancel_and_wait([following, *writers])
    assert made > 200 and resyncs >= 4 and store.sync_fallbacks == 0
    assert mirror.version == truth.version
    assert mirror.algorithm == truth.algorithm
    assert mirror.backends.keys() == truth.backends.keys()
    differ = [a for a, view in truth.backends.items() if mirror.backends[a] != view]
    assert differ == [], f"{len(differ)} backends differ, e.g. {differ[:3]}"


# -- the event loop during a re-sync of 100,000 backends ---------------------------------------------


@pytest.fixture(autouse=True)
def interpreter_as_a_service_sets_it() -> Iterator[None]:
    """The proxy or the admin runs in this test's process: the interpreter is set up as a service sets
    itself up at start-up (``tune_gc``), so a full collection of the test session's own objects is not
    counted as a stall; the test process's settings are restored afterwards."""
    interval = sys.getswitchinterval()
    tune_gc()
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        gc.unfreeze()


@pytest.fixture(scope="module")
def large_namespace(redis_url: str) -> Iterator[str]:
    """A namespace holding 100,000 backends (health for all, an ejection for every 50th), filled once."""
    namespace = f"test-large-{random.randrange(1 << 32):08x}"

    async def setup() -> None:
        store = Store.from_url(redis_url, namespace)
        try:
            await fill(store, LARGE, ejection_every=50)
        finally:
            await store.close()

    async def cleanup() -> None:
        store = Store.from_url(redis_url, namespace)
        try:
            keys = [key async for key in store.redis.scan_iter(match=f"{namespace}:*")]
            if keys:
                await store.redis.delete(*keys)
        finally:
            await store.close()

    asyncio.run(setup())
    try:
        yield namespace
    finally:
        asyncio.run(cleanup())


class Consumer:
    """What follows the watch in a service: ``start`` it, wait for its ``snapshots``, ``settle``."""

    snapshots: Callable[[], int]
    settle: Callable[[], Awaitable[None]]
    size: Callable[[], int]
    task: asyncio.Task[None]


def proxy_consumer(store: Store) -> Consumer:
    balancer = StoreBalancer(Config(), store, Replica(store, "proxy", ttl=5.0, heartbeat=1.0))
    consumer = Consumer()
    consumer.task = asyncio.create_task(balancer.watch())
    consumer.snapshots = lambda: balancer.snapshots

    async def settle() -> None:  # the policy built from the view, what the snapshot replaced freed
        await balancer.built()
        await eventually(lambda: not (balancer.view.retiring or balancer.building), timeout=30, message="settled")
        assert len(balancer.policy.candidates) > 0

    consumer.settle = settle
    consumer.size = lambda: len(balancer.view.backends)
    return consumer


def admin_consumer(store: Store) -> Consumer:
    snapshot = AdminSnapshot(start_healthy=False)
    consumer = Consumer()
    consumer.task = asyncio.create_task(snapshot.follow(store))
    consumer.snapshots = lambda: snapshot.snapshots

    async def settle() -> None:
        await eventually(lambda: not snapshot.retiring, timeout=30, message="what the snapshot replaced freed")

    consumer.settle = settle
    consumer.size = lambda: len(snapshot.mirror.backends)
    return consumer


@pytest.mark.slow
@pytest.mark.parametrize("service", ["proxy", "admin"])
async def test_a_full_resync_of_100k_backends_never_stalls_the_loop(
    redis_url: str, large_namespace: str, service: str
) -> None:
    """The first sync and a re-sync (an event lost) of 100,000 backends, from the watch's first read to the
    view installed and what it replaced freed: the loop never goes 20 ms of CPU without a turn."""
    store = Store.from_url(redis_url, large_namespace)
    writer = Store.from_url(redis_url, large_namespace)
    try:
        with LoopStalls() as stalls:
            consumer = (proxy_consumer if service == "proxy" else admin_consumer)(store)
            try:
                await eventually(lambda: consumer.snapshots() >= 1, timeout=60, message="the first sync")
                await consumer.settle()
                first = stalls.worst
                await lose_an_event(writer, random.randrange(1 << 30))
                await eventually(lambda: consumer.snapshots() >= 2, timeout=60, message="a re-sync")
                await consumer.settle()
            finally:
                await cancel_and_wait([consumer.task])
        assert consumer.size() > LARGE
        assert store.sync_fallbacks == 0
        assert stalls.ticks > 100
        assert stalls.worst < STALL_LIMIT, (
            f"the loop stalled {stalls.worst * 1000:.1f} ms (first sync: {first * 1000:.1f} ms)"
        )
    finally:
        await store.close()
        await writer.close()
