"""Pools and the route table in the store, against a real redis-server: the writes and their refusals, the
events they publish (consecutive versions), and what a watch (its snapshot, a chunked re-sync replaying
events) and a Mirror make of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from shared.aio import cancel_and_wait
from shared.config import OutlierConfig, ProbeConfig, RouteConfig
from shared.config.durations import Seconds, dec_hook
from shared.mirror import Mirror
from shared.models import AlgorithmSetting, Backend, Event, PoolSetting, RouteTableSetting, Snapshot
from shared.store import PoolExists, PoolInUse, PoolNotFound, Store
from shared.store.store import _PubSub
from tests.helpers import eventually


def route(name: str, pool: str, host: str = "", prefix: str = "/") -> RouteConfig:
    return RouteConfig(name=name, pool=pool, host=host, path_prefix=prefix)


def api_pool(**changes: object) -> PoolSetting:
    pool = PoolSetting(
        name="api",
        algorithm=AlgorithmSetting(name="least_connections", slow_start_sec=5.0),
        outlier=OutlierConfig(consecutive_failures=3, base_ejection_sec=Seconds(2.0)),
        health_check=ProbeConfig(type="http", path="/healthz", interval_sec=Seconds(0.5)),
    )
    return msgspec.structs.replace(pool, **changes)


class Events:
    """The events published on the store's channel, as decoded Events, read by a pub/sub of its own."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: list[Event] = []
        self.pubsub = _PubSub(store.redis.connection_pool, ignore_subscribe_messages=True)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.subscribe(self.store.keys.events)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                self.seen.append(msgspec.json.decode(message["data"], type=Event, dec_hook=dec_hook))

    async def wait(self, n: int) -> list[Event]:
        await eventually(lambda: len(self.seen) >= n, message=f"{n} events")
        return self.seen

    async def close(self) -> None:
        if self.task is not None:
            await cancel_and_wait([self.task])
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]


@pytest.fixture
async def events(store: Store) -> AsyncIterator[Events]:
    e = Events(store)
    await e.start()
    try:
        yield e
    finally:
        await e.close()


# -- writes -----------------------------------------------------------------------------------------


async def test_set_pool_modes_and_what_they_keep(store: Store) -> None:
    with pytest.raises(PoolNotFound):
        await store.set_pool(api_pool(), mode="update")
    changed, created = await store.set_pool(api_pool(), mode="create")
    assert changed and created.created_at > 0 and created.updated_at == created.created_at
    assert await store.get_pool("api") == created
    assert created.health_check is not None and created.health_check.interval_sec == 0.5  # (Seconds survive)

    with pytest.raises(PoolExists) as exists:
        await store.set_pool(api_pool(algorithm=AlgorithmSetting()), mode="create")
    assert exists.value.pool == created  # (the record in force, untouched)

    version = await store.version()
    changed, same = await store.set_pool(api_pool(), mode="put")
    assert not changed and same == created and await store.version() == version  # nothing written

    changed, updated = await store.set_pool(api_pool(outlier=None), mode="update")
    assert changed and updated.outlier is None and updated.created_at == created.created_at
    assert updated.updated_at >= created.updated_at and await store.version() == version + 1

    changed, other = await store.set_pool(PoolSetting(name="web"), mode="put")  # put creates, too
    assert changed and set(await store.get_pools()) == {"api", "web"}
    assert (await store.get_pools())["web"] == other


async def test_remove_pool_refusals(store: Store) -> None:
    await store.set_pool(api_pool(), mode="create")
    await store.set_pool(PoolSetting(name="api2"), mode="create")
    with pytest.raises(PoolNotFound):
        await store.remove_pool("nope")
    with pytest.raises(PoolInUse) as default:
        await store.remove_pool("default")
    assert "cannot be deleted" in str(default.value)

    await store.create_backend(Backend(address="10.0.0.1:80", pool="api"))
    await store.create_backend(Backend(address="10.0.0.2:80", pool="api"))
    await store.create_backend(Backend(address="10.0.0.3:80"))  # default
    version = await store.version()
    with pytest.raises(PoolInUse) as busy:
        await store.remove_pool("api")
    assert busy.value.backends == 2 and "2 backend(s)" in str(busy.value)
    assert await store.version() == version and await store.get_pool("api") is not None

    await store.remove_backend("10.0.0.1:80")
    await store.update_backend("10.0.0.2:80", {"pool": "api2"})  # moved: "api" no longer named by a backend
    with pytest.raises(PoolInUse) as still:
        await store.remove_pool("api2")  # ("api" is a prefix of "api2": only api2 is in use)
    assert still.value.backends == 1
    await store.set_routes(RouteTableSetting(routes=[route("r", "api", host="a.example.com")]))
    with pytest.raises(PoolInUse) as routed:
        await store.remove_pool("api")
    assert routed.value.backends == 0 and "route table" in str(routed.value)

    await store.set_routes(RouteTableSetting(routes=[], default_pool="api"))
    with pytest.raises(PoolInUse):
        await store.remove_pool("api")  # the default_pool names it

    await store.set_routes(RouteTableSetting(routes=[route("r", "default")]))
    removed = await store.remove_pool("api")
    assert removed.name == "api" and await store.get_pool("api") is None


async def test_set_routes_refuses_unknown_pools_and_keeps_the_table(store: Store) -> None:
    assert await store.get_routes() is None
    first = RouteTableSetting(routes=[route("a", "default", host="a.example.com")])
    assert await store.set_routes(first)
    stored = await store.get_routes()
    assert stored is not None and stored.routes == first.routes and stored.updated_at > 0
    version = await store.version()

    with pytest.raises(PoolNotFound) as missing:
        await store.set_routes(RouteTableSetting(routes=[route("a", "default"), route("b", "ghost", prefix="/b")]))
    assert missing.value.name == "ghost"
    with pytest.raises(PoolNotFound):
        await store.set_routes(RouteTableSetting(routes=[], default_pool="ghost"))
    assert await store.get_routes() == stored and await store.version() == version

    assert not await store.set_routes(first)  # the same table: nothing written
    assert await store.get_routes() == stored and await store.version() == version

    await store.set_pool(PoolSetting(name="ghost"), mode="create")
    assert await store.set_routes(RouteTableSetting(routes=[route("b", "ghost")], default_pool="default"))
    after = await store.get_routes()
    assert after is not None and [r.pool for r in after.routes] == ["ghost"] and after.default_pool == "default"


async def test_events_carry_the_change_with_consecutive_versions(store: Store, events: Events) -> None:
    start = await store.version()
    _, pool = await store.set_pool(api_pool(), mode="create")
    await store.set_pool(api_pool(), mode="put")  # unchanged: no event
    await store.create_backend(Backend(address="10.0.0.1:80", pool="api"))
    table = RouteTableSetting(routes=[route("r", "api", host="api.example.com")], default_pool="default")
    await store.set_routes(table)
    await store.set_routes(table)  # unchanged: no event
    await store.remove_backend("10.0.0.1:80")
    await store.set_routes(RouteTableSetting())
    await store.remove_pool("api")
    seen = await events.wait(6)
    assert [e.kind for e in seen] == [
        "pool_set",
        "backend_added",
        "routes",
        "backend_removed",
        "routes",
        "pool_removed",
    ]
    assert [e.version for e in seen] == list(range(start + 1, start + 7))
    assert seen[0].name == "api" and seen[0].pool == pool
    assert seen[1].backend is not None and seen[1].backend.pool == "api"
    assert seen[2].routes is not None and seen[2].routes.routes == table.routes
    assert seen[2].routes.default_pool == "default"
    assert seen[4].routes == await store.get_routes()
    assert seen[5].name == "api" and seen[5].pool is None


# -- what readers make of it ------------------------------------------------------------------------


async def test_snapshot_and_mirror_follow_pools_and_routes(store: Store) -> None:
    await store.set_pool(api_pool(), mode="create")
    await store.set_routes(RouteTableSetting(routes=[route("r", "api")]))
    mirror = Mirror()

    async def follow() -> None:
        async for item in store.watch():
            mirror.apply(item)

    task = asyncio.create_task(follow())
    try:
        await eventually(lambda: mirror.version >= 0, message="the first snapshot")
        assert mirror.pools == await store.get_pools()
        assert mirror.routes == await store.get_routes()

        await store.set_pool(PoolSetting(name="web"), mode="create")
        await store.set_routes(RouteTableSetting(routes=[route("w", "web")], default_pool="api"))
        await store.set_routes(RouteTableSetting(routes=[route("w", "web")]))
        await store.remove_pool("api")
        final = await store.version()
        await eventually(lambda: mirror.version >= final, message="the watch catches up")
    finally:
        await cancel_and_wait([task])
    truth = await store.snapshot()
    assert mirror.pools == truth.pools and set(mirror.pools) == {"web"}
    assert mirror.routes == truth.routes
    assert mirror.routes is not None and [r.name for r in mirror.routes.routes] == ["w"]


async def test_a_snapshot_without_a_table_says_so(store: Store) -> None:
    snap = await store.snapshot()
    assert snap.routes is None and snap.pools == {}
    mirror = Mirror()
    mirror.apply(snap)
    assert mirror.routes is None and mirror.pools == {}


async def test_a_chunked_resync_replays_pool_and_route_events(store: Store, redis_url: str, namespace: str) -> None:
    """Pool and route-table changes made between the chunks of a re-sync (after its first read) are
    replayed over it: the snapshot is the store's state at its version."""
    for i in range(250):
        await store.create_backend(Backend(address=f"10.0.{i // 256}.{i % 256}:80", pool="default"))
    await store.set_pool(api_pool(), mode="create")
    await store.set_pool(PoolSetting(name="old"), mode="create")
    await store.set_routes(RouteTableSetting(routes=[route("r", "api")]))
    writer = Store.from_url(redis_url, namespace)
    pubsub = _PubSub(store.redis.connection_pool, ignore_subscribe_messages=True)
    await pubsub.subscribe(store.keys.events)
    scan = store._scan_views
    chunks = 0

    async def between_chunks(*, keys: list[str], args: list[str | int]) -> object:
        nonlocal chunks
        reply = await scan(keys=keys, args=args)
        chunks += 1
        if chunks == 1:
            await writer.set_pool(PoolSetting(name="web"), mode="create")
            await writer.set_pool(api_pool(algorithm=AlgorithmSetting(name="ip_hash")), mode="update")
            await writer.create_backend(Backend(address="10.9.9.9:80", pool="web"))
        elif chunks == 2:
            await writer.set_routes(RouteTableSetting(routes=[route("w", "web"), route("r", "api", prefix="/api")]))
            await writer.remove_pool("old")
        return reply

    store._scan_views = between_chunks  # type: ignore[assignment]
    try:
        snap = await store._chunked_snapshot(pubsub, chunk=100)
        truth = await store.snapshot()
    finally:
        store._scan_views = scan
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await writer.close()
    assert isinstance(snap, Snapshot) and chunks >= 3
    assert snap.version == truth.version
    assert snap.pools == truth.pools and set(snap.pools) == {"api", "web"}
    assert snap.pools["api"].algorithm.name == "ip_hash"
    assert snap.routes == truth.routes and snap.routes is not None
    assert [r.name for r in snap.routes.routes] == ["w", "r"]
    assert snap.backends == truth.backends and snap.backends["10.9.9.9:80"].backend.pool == "web"
