"""Every pool's balancer in a proxy that follows the store, fed by one watch.

The store holds one set of backends, each naming its pool (``Backend.pool``), the pools' settings
(``NS:pools``) and the route table (``NS:routes``). One ``Store.watch()`` reads it all, and
:class:`StorePools` splits what it yields: each pool's :class:`StoreBalancer` sees a Snapshot of its
own backends and the events about them, exactly as if it watched a store of its own, so everything a
balancer does (background builds, slow start, outlier ejection, the stale-view checks) works per pool
unchanged. The pool of an event that names only an address (health, ejection, removal) is looked up
in ``where`` (address -> pool), kept from the backends' records.

What is shared: the replica (its heartbeat and in-flight table: an address serves one pool at a time,
so the table's keys never collide), one refresh of the other replicas' counts (one Redis read per
interval for all pools, split by pool), and the route table. Whoever routes (each listener's
``Context``) registers in ``listeners`` and is told when the set of pools or the route table changed;
it then swaps its table in one step (no request sees half of one).

Precedence of settings: a pool's record in the store, else its ``pools:`` section in the config, else
the top-level settings; the store's route table, else the config's ``routes``/``default_pool``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any

import msgspec

from services.proxy.store_balancer import APPLY_BATCH, APPLY_SLICE_SEC, StoreBalancer, running_replica, watch_store
from shared.aio import Turns, cancel_and_wait
from shared.config import DEFAULT_POOL, Config, RouteConfig
from shared.logs import get_logger
from shared.models import AlgorithmSetting, BackendView, Event, PoolSetting, RouteTableSetting, Snapshot
from shared.replica import Replica
from shared.store import Store

log = get_logger("pools")

# Backends sorted into pools between two turns of the loop when a snapshot is split (a re-sync of
# 100,000 backends must not stall the loop: about 1 ms per 5,000).
SPLIT_SLICE = 5_000


class StorePools:
    def __init__(self, config: Config, store: Store, replica: Replica, **options: Any) -> None:
        self.config = config
        self.store = store
        self.replica = replica
        self.options = options
        self.default = StoreBalancer(config, store, replica, **options)
        self.balancers: dict[str, StoreBalancer] = {DEFAULT_POOL: self.default}
        self.where: dict[str, str] = {}  # address -> its pool
        self.settings: dict[str, PoolSetting] = {}  # the store's pool records
        self.stored_routes: RouteTableSetting | None = None  # None: the config's table is in force
        self.version = -1
        self.listeners: list[Callable[[], None]] = []  # told when the pools or the route table changed
        # Called with every Snapshot and Event of the store as it is (the live rate-limit rules follow theirs).
        self.apply_listeners: list[Callable[[Snapshot | Event], None]] = []
        self.route_changes = 0  # route tables taken from the store (tests wait on it)
        self._publishers: dict[str, asyncio.Task[None]] = {}
        self._start_publisher(DEFAULT_POOL, self.default)
        for name in config.pools:
            self._balancer(name)

    # -- what the routing reads --------------------------------------------------------------

    @property
    def routes(self) -> Sequence[RouteConfig]:
        return self.stored_routes.routes if self.stored_routes is not None else self.config.routes

    @property
    def unmatched_pool(self) -> str:
        """The pool of a request no route matches ("": 404): ``default_pool``, or with no routes, ``default``."""
        if self.stored_routes is None:
            return self.config.unmatched_pool
        table = self.stored_routes
        return table.default_pool or ("" if table.routes else DEFAULT_POOL)

    @property
    def routed(self) -> bool:
        """Whether requests go through a route table (the config's or the store's, even an empty one)."""
        return self.stored_routes is not None or bool(self.config.routes)

    # -- pools -------------------------------------------------------------------------------

    def pool_config(self, name: str, setting: PoolSetting | None = None) -> Config:
        """The settings a pool's balancer runs with: the config's section of the pool (its backends serve
        while the store is unreachable at startup), the store record's outlier settings over them."""
        config = self.config
        pool = config.pools.get(name)
        balancing = pool.balancing if pool is not None else config.balancing
        if setting is not None and setting.outlier is not None:
            balancing = msgspec.structs.replace(balancing, outlier=setting.outlier)
        if name == DEFAULT_POOL:
            return config if balancing is config.balancing else msgspec.structs.replace(config, balancing=balancing)
        return msgspec.structs.replace(
            config,
            backends=pool.backends if pool is not None else [],
            algorithm=pool.algorithm if pool is not None else "round_robin",
            balancing=balancing,
        )

    def _balancer(self, name: str) -> StoreBalancer:
        balancer = self.balancers.get(name)
        if balancer is None:
            balancer = StoreBalancer(
                self.pool_config(name, self.settings.get(name)), self.store, self.replica, **self.options
            )
            self.balancers[name] = balancer
            if self.version >= 0:  # created by an event: start from an empty view of the store
                balancer.apply(Snapshot(version=self.version, backends={}, algorithm=self._algorithm(name)))
            self._start_publisher(name, balancer)
        return balancer

    def _algorithm(self, name: str, default: AlgorithmSetting | None = None) -> AlgorithmSetting:
        if name == DEFAULT_POOL:
            return default if default is not None else self.default.view.algorithm
        setting = self.settings.get(name)
        if setting is None:
            return AlgorithmSetting()  # (updated_at 0: the balancer runs the config's algorithm)
        # A stored pool's algorithm is in force, as an algorithm the store set is for the default pool.
        return msgspec.structs.replace(setting.algorithm, updated_at=setting.updated_at or 1.0)

    def _wanted(self) -> set[str]:
        """The pools that have a balancer: the default, the config's and the store's, and any a backend or a
        route names."""
        names = {DEFAULT_POOL, *self.config.pools, *self.settings, *self.where.values()}
        names.update(r.pool for r in self.routes)
        if self.unmatched_pool:
            names.add(self.unmatched_pool)
        return names

    def _settle_pools(self) -> None:
        wanted = self._wanted()
        for name in wanted:
            self._balancer(name)
        for name in [n for n in self.balancers if n not in wanted]:
            del self.balancers[name]
            task = self._publishers.pop(name, None)
            if task is not None:
                task.cancel()
        for listener in self.listeners:
            listener()

    # -- input -------------------------------------------------------------------------------

    async def apply_snapshot(self, snap: Snapshot) -> None:
        """Split ``snap`` by pool (a turn of the loop every ``SPLIT_SLICE`` backends), then hand each pool
        its part at once."""
        parts: dict[str, dict[str, BackendView]] = {}
        where: dict[str, str] = {}
        for i, (address, view) in enumerate(snap.backends.items()):
            pool = view.backend.pool
            where[address] = pool
            part = parts.get(pool)
            if part is None:
                part = parts[pool] = {}
            part[address] = view
            if i % SPLIT_SLICE == SPLIT_SLICE - 1:
                await asyncio.sleep(0)
        self.version = snap.version
        self.where = where
        self.settings = dict(snap.pools)
        self.stored_routes = snap.routes
        for name in self._wanted():
            balancer = self._balancer(name)
            if name != DEFAULT_POOL:
                self._configure(name, balancer)
            balancer.apply(
                Snapshot(
                    version=snap.version, backends=parts.get(name, {}), algorithm=self._algorithm(name, snap.algorithm)
                )
            )
        self._settle_pools()

    def apply_event(self, event: Event) -> None:
        self.version = event.version
        kind, address = event.kind, event.address or ""
        if kind in ("backend_added", "backend_updated") and event.backend is not None:
            pool = event.backend.pool
            old = self.where.get(address)
            self.where[address] = pool
            new = pool not in self.balancers
            balancer = self._balancer(pool)
            if old is not None and old != pool:  # moved: leaves one pool, joins the other with its health
                self._move(address, old, balancer, event)
            else:
                balancer.apply(event)
            if new:
                self._settle_pools()
        elif kind == "backend_removed":
            owner = self.where.pop(address, None)
            if owner is not None and owner in self.balancers:
                self.balancers[owner].apply(event)
        elif kind in ("health", "ejection"):
            owner = self.where.get(address)
            if owner is not None and owner in self.balancers:
                self.balancers[owner].apply(event)
        elif kind == "algorithm":
            self.default.apply(event)
        elif kind == "pool_set" and event.pool is not None:
            name = event.pool.name
            self.settings[name] = event.pool
            balancer = self._balancer(name)
            self._configure(name, balancer)
            if name != DEFAULT_POOL:
                balancer.apply(
                    Event(version=event.version, kind="algorithm", at=event.at, algorithm=self._algorithm(name))
                )
            self._settle_pools()
        elif kind == "pool_removed" and event.name is not None:
            self.settings.pop(event.name, None)
            self._settle_pools()
        elif kind == "routes":
            self.stored_routes = event.routes
            self.route_changes += 1
            self._settle_pools()

    def _move(self, address: str, old: str, balancer: StoreBalancer, event: Event) -> None:
        previous = self.balancers.get(old)
        view = previous.view.backends.get(address) if previous is not None else None
        if previous is not None:
            previous.apply(Event(version=event.version, kind="backend_removed", address=address))
        balancer.apply(event)
        if view is not None and view.health.status != "unknown":
            balancer.apply(Event(version=event.version, kind="health", address=address, health=view.health))

    def _configure(self, name: str, balancer: StoreBalancer) -> None:
        """A store record's outlier settings, in force at once (a new detector: its counts start over)."""
        config = self.pool_config(name, self.settings.get(name))
        if balancer.outlier.config != config.balancing.outlier:
            balancer.reconfigure(config)

    # -- background tasks --------------------------------------------------------------------

    async def follow(self, items: AsyncIterable[Snapshot | Event]) -> None:
        turns = Turns(APPLY_BATCH, APPLY_SLICE_SEC)
        async for item in items:
            if isinstance(item, Snapshot):
                await self.apply_snapshot(item)
            else:
                self.apply_event(item)
            for listener in self.apply_listeners:
                listener(item)
            await turns.after_item()

    async def watch(self) -> None:
        await watch_store(self.store, self.follow)

    async def refresh(self) -> None:
        """Every pool's refresh in one: the other replicas' in-flight counts read once (when any pool's
        policy reads counts) and split by pool."""
        interval = self.default.refresh_interval
        while True:
            balancers = list(self.balancers.items())
            for _, balancer in balancers:
                balancer.refresh_rounds += 1
                balancer.prune()
            others: dict[str, int] | None = {}
            if any(b.uses_counts for _, b in balancers):
                others = await self.default.read_others()
            if others is None:
                for _, balancer in balancers:
                    balancer.take_others(None)
            else:
                parts: dict[str, dict[str, int]] = {}
                where = self.where
                for address, count in others.items():
                    parts.setdefault(where.get(address, DEFAULT_POOL), {})[address] = count
                for name, balancer in balancers:
                    balancer.take_others(parts.get(name, {}) if balancer.uses_counts else {})
            await asyncio.sleep(interval)

    def _start_publisher(self, name: str, balancer: StoreBalancer) -> None:
        with contextlib.suppress(RuntimeError):  # (no running loop: a pure use, nothing to publish)
            loop = asyncio.get_running_loop()
            self._publishers[name] = loop.create_task(balancer.publish(), name=f"balancer-publish-{name}")

    async def start_from(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for the store's first snapshot; else every pool serves its configured
        backends."""
        await self.default.start_from(wait)
        for name, balancer in list(self.balancers.items()):
            if name != DEFAULT_POOL:
                await balancer.start_from(0.0)

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = list(self._publishers.values())
        for balancer in self.balancers.values():
            tasks += balancer.background()
        await cancel_and_wait(tasks)


@contextlib.asynccontextmanager
async def open_store_pools(
    config: Config,
    store: Store,
    *,
    replica: Replica | None = None,
    listen: str = "",
    first_snapshot_timeout: float = 2.0,
    **options: Any,
) -> AsyncIterator[StorePools]:
    """Running :class:`StorePools`: the watch, the refresh, each pool's publisher (and, unless ``replica`` is
    given, the heartbeat) run inside the context and are stopped on exit."""
    options.setdefault("refresh_interval", float(config.redis.counts_sync_sec))
    async with running_replica(config, store, replica, listen) as replica:
        pools = StorePools(config, store, replica, **options)
        tasks = [
            asyncio.create_task(pools.watch(), name="pools-watch"),
            asyncio.create_task(pools.refresh(), name="pools-refresh"),
        ]
        try:
            await pools.start_from(first_snapshot_timeout)
            yield pools
        finally:
            await cancel_and_wait(tasks)
            await pools.close()
