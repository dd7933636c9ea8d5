"""The async API over the Redis state model (see docs/state-model.md)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.config.durations import dec_hook, enc_hook
from shared.config.routing import DEFAULT_POOL
from shared.denylist import BackendDenyList, Listener, replica_listeners
from shared.logs import get_logger
from shared.mirror import apply_event, apply_settings_event
from shared.models import (
    AlgorithmSetting,
    Backend,
    BackendView,
    Ejection,
    Event,
    Health,
    HealthStatus,
    Origin,
    PoolSetting,
    ReplicaInfo,
    RouteTableSetting,
    Snapshot,
    now,
)
from shared.store import keys as lua
from shared.store.connect import Redis, redis_from_url
from shared.store.keys import Keys

log = get_logger("store")

# Errors that mean "Redis is not reachable right now" (as opposed to a bug or a refused command).
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)
# Anything a store call can fail with short of a bug: unreachable, or a command refused (READONLY
# after a failover, OOM, MISCONF...). Background loops catch these and retry.
STORE_ERRORS = (*UNAVAILABLE, RedisError)

_backend_decoder = msgspec.json.Decoder(Backend)
_health_decoder = msgspec.json.Decoder(Health)
_ejection_decoder = msgspec.json.Decoder(Ejection)
_algorithm_decoder = msgspec.json.Decoder(AlgorithmSetting)
# (A pool's settings hold durations, ``Seconds``: the hooks write them as numbers and read them back.)
_event_decoder = msgspec.json.Decoder(Event, dec_hook=dec_hook)
_replica_decoder = msgspec.json.Decoder(ReplicaInfo)
_pool_decoder = msgspec.json.Decoder(PoolSetting, dec_hook=dec_hook)
_routes_decoder = msgspec.json.Decoder(RouteTableSetting, dec_hook=dec_hook)
_views_decoder = msgspec.json.Decoder(list[BackendView])
_encoder = msgspec.json.Encoder(enc_hook=enc_hook)

# The watch's full read (see Store._sync): backends per chunk (each chunk one script call, one
# string decoded in C: ~1 ms of the reader's loop per 1,000 backends, ~5 ms of Redis), attempts
# before falling back to one atomic read, and how long it waits for the events of the changes made
# during a read.
SYNC_CHUNK = 1000
SYNC_ATTEMPTS = 3
SYNC_EVENTS_WAIT_SEC = 2.0
# Buffered events replayed back to back over a chunked read before the loop gets a turn.
REPLAY_BATCH = 500

BACKEND_PATCH_FIELDS = frozenset({"weight", "state", "origin", "pool"})


class StoreError(Exception):
    """A domain error from the store; subclasses name what went wrong."""


class BackendExists(StoreError):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        super().__init__(f"backend {backend.address} already exists")


class BackendNotFound(StoreError):
    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(f"backend {address} not found")


class OriginMismatch(StoreError):
    def __init__(self, backend: Backend, expected: str) -> None:
        self.backend, self.expected = backend, expected
        super().__init__(f"backend {backend.address} belongs to origin {backend.origin!r}, not {expected!r}")


class BackendDenied(StoreError):
    """The address is on the deny list (``backend_deny``): the suite's own listener, or a denied network."""

    def __init__(self, address: str, reason: str) -> None:
        self.address, self.reason = address, reason
        super().__init__(reason)


class PoolExists(StoreError):
    def __init__(self, pool: PoolSetting) -> None:
        super().__init__(f"pool {pool.name} exists")
        self.pool = pool


class PoolNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no pool {name}")
        self.name = name


class PoolInUse(StoreError):
    """A pool still named by backends (``backends`` > 0) or by the stored route table; or the default
    pool, which always exists (``reason`` says which)."""

    def __init__(self, name: str, backends: int = 0, *, reason: str = "") -> None:
        what = reason or (f"{backends} backend(s) are in it" if backends else "the route table sends requests to it")
        super().__init__(f"pool {name} is in use: {what}" if not reason else f"pool {name}: {reason}")
        self.name, self.backends, self.reason = name, backends, what


class Fenced(StoreError):
    """The writer's lease was lost: another replica holds it now."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: ``value`` is ``holder:fence`` and fences writes made under it."""

    name: str
    value: str

    @property
    def token(self) -> int:
        return int(self.value.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: Literal["backend_added", "backend_updated", "unchanged"]
    backend: Backend


class _PubSub(PubSub):
    """A PubSub that counts (re)connections: redis-py re-subscribes silently after a drop, and any
    message published meanwhile is lost, so the watcher must re-read the state when this grows."""

    connects = 0

    async def on_connect(self, connection: Any) -> None:
        self.connects += 1
        await super().on_connect(connection)


def _decode_pools(raw: Mapping[Any, Any]) -> dict[str, PoolSetting]:
    return {_text(name): _pool_decoder.decode(value) for name, value in raw.items()}


def _settings_equal(a: PoolSetting, b: PoolSetting) -> bool:
    """Whether two records of a pool hold the same settings (timestamps aside)."""

    def plain(p: PoolSetting) -> PoolSetting:
        algorithm = msgspec.structs.replace(p.algorithm, updated_at=0.0)
        return msgspec.structs.replace(p, algorithm=algorithm, created_at=0.0, updated_at=0.0)

    return plain(a) == plain(b)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """All reads and writes of the shared state. One instance per process; it owns its client."""

    def __init__(self, redis: Redis, namespace: str = "gobalancer") -> None:
        self.redis = redis
        self.keys = Keys(namespace)
        # Checked before any write that may add a backend (set by ``shared.service.open_store``).
        self.denylist: BackendDenyList | None = None
        self._live_listeners: tuple[float, list[Listener]] | None = None  # (read at, listeners)
        self._write_backend = redis.register_script(lua.WRITE_BACKEND)
        self._remove_backend = redis.register_script(lua.REMOVE_BACKEND)
        self._clear_override = redis.register_script(lua.CLEAR_OVERRIDE)
        self._set_health = redis.register_script(lua.SET_HEALTH)
        self._set_ejection = redis.register_script(lua.SET_EJECTION)
        self._set_algorithm = redis.register_script(lua.SET_ALGORITHM)
        self._set_pool = redis.register_script(lua.SET_POOL)
        self._remove_pool = redis.register_script(lua.REMOVE_POOL)
        self._set_routes = redis.register_script(lua.SET_ROUTES)
        self._push_counters = redis.register_script(lua.PUSH_COUNTERS)
        self._push_absolute = redis.register_script(lua.PUSH_ABSOLUTE)
        self._read_replicas = redis.register_script(lua.READ_REPLICAS)
        self._read_replica_infos = redis.register_script(lua.READ_REPLICA_INFOS)
        self._global_inflight = redis.register_script(lua.GLOBAL_INFLIGHT)
        self._deregister = redis.register_script(lua.DEREGISTER)
        self._acquire = redis.register_script(lua.ACQUIRE_LEASE)
        self._release = redis.register_script(lua.RELEASE_LEASE)
        self._scan_views = redis.register_script(lua.SCAN_VIEWS)
        self.sync_fallbacks = 0  # full reads that fell back to one atomic read (see _sync)

    @classmethod
    def from_url(cls, url: str, namespace: str = "gobalancer", **options: Any) -> Store:
        return cls(redis_from_url(url, **options), namespace)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except STORE_ERRORS:
            return False

    # -- reads -------------------------------------------------------------------------------

    async def version(self) -> int:
        return int(await self.redis.get(self.keys.version) or 0)

    async def snapshot(self) -> Snapshot:
        """The whole state, read in one MULTI/EXEC so it is consistent with its version."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(k.version)
            pipe.hgetall(k.backends)
            pipe.hgetall(k.health)
            pipe.hgetall(k.ejections)
            pipe.get(k.algorithm)
            pipe.hgetall(k.pools)
            pipe.get(k.routes)
            version, backends, health, ejections, algorithm, pools, routes = await pipe.execute()
        views: dict[str, BackendView] = {}
        for raw_addr, raw in backends.items():
            addr = _text(raw_addr)
            h = health.get(raw_addr)
            e = ejections.get(raw_addr)
            views[addr] = BackendView(
                backend=_backend_decoder.decode(raw),
                health=_health_decoder.decode(h) if h else Health(),
                ejection=_ejection_decoder.decode(e) if e else None,
            )
        return Snapshot(
            version=int(version or 0),
            backends=views,
            algorithm=_algorithm_decoder.decode(algorithm) if algorithm else AlgorithmSetting(),
            pools=_decode_pools(pools),
            routes=_routes_decoder.decode(routes) if routes else None,
        )

    async def list_backends(self) -> list[BackendView]:
        snap = await self.snapshot()
        return sorted(snap.backends.values(), key=lambda v: v.address)

    async def scan_backends(self, chunk: int = 200) -> AsyncIterator[list[Backend]]:
        """Every backend's record (without health or ejection), read in chunks (HSCAN): a reader of
        10,000 backends gets the loop back between chunks instead of parsing them all in one go. Not a
        consistent snapshot (a backend changed meanwhile may appear twice or in either version): for
        readers whose writes are guarded anyway, such as discovery's reconciler."""
        cursor = 0
        while True:
            cursor, fields = await self.redis.hscan(self.keys.backends, cursor, count=chunk)
            assert isinstance(fields, dict)
            yield [_backend_decoder.decode(raw) for raw in fields.values()]
            if cursor == 0:
                return

    async def get_backend(self, address: str) -> BackendView | None:
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(k.backends, address)
            pipe.hget(k.health, address)
            pipe.hget(k.ejections, address)
            raw, h, e = await pipe.execute()
        if raw is None:
            return None
        return BackendView(
            backend=_backend_decoder.decode(raw),
            health=_health_decoder.decode(h) if h else Health(),
            ejection=_ejection_decoder.decode(e) if e else None,
        )

    async def get_algorithm(self) -> AlgorithmSetting:
        raw = await self.redis.get(self.keys.algorithm)
        return _algorithm_decoder.decode(raw) if raw else AlgorithmSetting()

    async def get_pools(self) -> dict[str, PoolSetting]:
        """The stored pools' settings by name (the configuration's pools are seeded here by discovery)."""
        return _decode_pools(await self.redis.hgetall(self.keys.pools))

    async def get_pool(self, name: str) -> PoolSetting | None:
        raw = await self.redis.hget(self.keys.pools, name)
        return _pool_decoder.decode(raw) if raw else None

    async def get_routes(self) -> RouteTableSetting | None:
        """The stored route table; None while none was stored (the configuration's is in force)."""
        raw = await self.redis.get(self.keys.routes)
        return _routes_decoder.decode(raw) if raw else None

    # -- writes ------------------------------------------------------------------------------

    def _common(self, fence: Lease | None) -> tuple[list[str], list[Any]]:
        k = self.keys
        lease_key = k.lease(fence.name) if fence else k.lease("-")
        return (
            [lease_key, k.backends, k.health, k.ejections, k.version],
            [fence.value if fence else "", k.events, repr(now())],
        )

    async def _write(
        self,
        mode: Literal["create", "update", "upsert"],
        address: str,
        patch: Mapping[str, Any],
        *,
        guard_origin: Origin | None,
        fence: Lease | None,
        existing_fields: tuple[str, ...] = (),
    ) -> WriteResult:
        unknown = set(patch) - BACKEND_PATCH_FIELDS
        if unknown:
            raise ValueError(f"cannot patch fields {sorted(unknown)}")
        if mode != "update" and self.denylist is not None and (reason := await self._refusal(address)):
            raise BackendDenied(address, reason)
        keys, args = self._common(fence)
        reply = await self._write_backend(
            keys=keys,
            args=[
                *args,
                mode,
                address,
                _encoder.encode(dict(patch)),
                guard_origin or "",
                ",".join(existing_fields),
            ],
        )
        outcome = _text(reply[0])
        if outcome == "fenced":
            raise Fenced(f"lease {fence.name if fence else ''} lost")
        if outcome == "exists":
            raise BackendExists(_backend_decoder.decode(reply[1]))
        if outcome == "missing":
            raise BackendNotFound(address)
        backend = _backend_decoder.decode(reply[1])
        if outcome == "origin":
            raise OriginMismatch(backend, guard_origin or "")
        assert outcome in ("backend_added", "backend_updated", "unchanged")
        return WriteResult(outcome, backend)  # type: ignore[arg-type]

    async def _refusal(self, address: str) -> str | None:
        """Why the deny list refuses ``address`` as a new backend, or None; live replicas' listeners
        are read at most once a second."""
        assert self.denylist is not None
        reason = self.denylist.reason(address)
        if reason is not None or not self.denylist.own_listeners:
            return reason
        at = time.monotonic()
        if self._live_listeners is None or at - self._live_listeners[0] > 1.0:
            self._live_listeners = (at, replica_listeners(await self.replicas()))
        return self.denylist.reason(address, self._live_listeners[1])

    async def create_backend(self, backend: Backend, *, fence: Lease | None = None) -> Backend:
        """Add a backend; BackendExists if the address is taken."""
        patch = {"weight": backend.weight, "origin": backend.origin, "state": backend.state, "pool": backend.pool}
        result = await self._write("create", backend.address, patch, guard_origin=None, fence=fence)
        return result.backend

    async def update_backend(
        self,
        address: str,
        patch: Mapping[str, Any],
        *,
        guard_origin: Origin | None = None,
        fence: Lease | None = None,
    ) -> WriteResult:
        """The operator's change to fields of an existing backend (outcome ``"unchanged"`` when they
        already held those values: nothing written); BackendNotFound if there is none.

        On a backend a discovery source owns, a change to weight or state is kept as an operator
        override that the source's writes leave in force until :meth:`clear_override` (setting a field
        back to the source's value ends that field's override)."""
        return await self._write("update", address, patch, guard_origin=guard_origin, fence=fence)

    async def upsert_backend(
        self,
        backend: Backend,
        *,
        fields: tuple[str, ...] = ("weight", "origin", "state", "pool"),
        guard_origin: Origin | None = None,
        fence: Lease | None = None,
    ) -> WriteResult:
        """A discovery source's write: create, or update ``fields`` to match ``backend``; writes
        nothing when already equal.

        A new backend takes all of ``backend``'s fields; an existing one only ``fields`` (so a
        reconcile that passes ``("weight",)`` keeps an operator's drain). A field under an operator
        override keeps the operator's value; the source's is remembered for when it is cleared.
        """
        patch = {"weight": backend.weight, "origin": backend.origin, "state": backend.state, "pool": backend.pool}
        return await self._write(
            "upsert", backend.address, patch, guard_origin=guard_origin, fence=fence, existing_fields=fields
        )

    async def clear_override(self, address: str) -> WriteResult:
        """End every operator override of ``address``: the source's values are in force again
        (outcome ``"unchanged"`` when it had none); BackendNotFound if there is no such backend."""
        keys, args = self._common(None)
        reply = await self._clear_override(keys=keys, args=[*args, address])
        outcome = _text(reply[0])
        if outcome == "missing":
            raise BackendNotFound(address)
        return WriteResult(
            "unchanged" if outcome == "unchanged" else "backend_updated", _backend_decoder.decode(reply[1])
        )

    async def remove_backend(
        self, address: str, *, guard_origin: Origin | None = None, fence: Lease | None = None
    ) -> Backend:
        keys, args = self._common(fence)
        reply = await self._remove_backend(keys=keys, args=[*args, address, guard_origin or ""])
        outcome = _text(reply[0])
        if outcome == "fenced":
            raise Fenced("lease lost")
        if outcome == "missing":
            raise BackendNotFound(address)
        backend = _backend_decoder.decode(reply[1])
        if outcome == "origin":
            raise OriginMismatch(backend, guard_origin or "")
        return backend

    async def set_health(
        self,
        address: str,
        status: HealthStatus,
        reason: str = "",
        *,
        fence: Lease | None = None,
    ) -> bool:
        """Record a health verdict; only a transition is written. True when something changed.

        A passive ejection is left alone: it ends at its own time (see ``keys.SET_HEALTH``)."""
        keys, args = self._common(fence)
        reply = await self._set_health(keys=keys, args=[*args, address, status, reason])
        outcome = _text(reply[0])
        if outcome == "fenced":
            raise Fenced("lease lost")
        if outcome == "missing":
            raise BackendNotFound(address)
        return outcome == "changed"

    async def set_ejection(self, address: str, ejection: Ejection | None) -> bool:
        keys, args = self._common(None)
        payload = _encoder.encode(ejection).decode() if ejection is not None else ""
        reply = await self._set_ejection(keys=keys, args=[*args, address, payload])
        outcome = _text(reply[0])
        if outcome == "missing":
            raise BackendNotFound(address)
        return outcome == "changed"

    async def set_algorithm(self, setting: AlgorithmSetting, *, fence: Lease | None = None) -> bool:
        k = self.keys
        lease_key = k.lease(fence.name) if fence else k.lease("-")
        setting = msgspec.structs.replace(setting, updated_at=now())
        reply = await self._set_algorithm(
            keys=[lease_key, k.algorithm, k.version],
            args=[fence.value if fence else "", k.events, repr(now()), _encoder.encode(setting)],
        )
        if _text(reply[0]) == "fenced":
            raise Fenced("lease lost")
        return _text(reply[0]) == "changed"

    async def set_pool(
        self,
        pool: PoolSetting,
        *,
        mode: Literal["create", "update", "put"] = "put",
        fence: Lease | None = None,
    ) -> tuple[bool, PoolSetting]:
        """Write a pool's settings: ``create`` (PoolExists if there is one), ``update`` (PoolNotFound if
        there is none) or ``put`` (either). Returns (changed, the record in force); the record keeps its
        ``created_at``. Checking the settings is the caller's (the admin, the config loader)."""
        k = self.keys
        at = now()
        current = await self.get_pool(pool.name)
        if current is not None and _settings_equal(current, pool):
            record = current  # (the script answers "unchanged": no write, no version, no event)
        else:
            record = msgspec.structs.replace(
                pool, created_at=current.created_at if current is not None else at, updated_at=at
            )
        reply = await self._set_pool(
            keys=[k.lease(fence.name) if fence else k.lease("-"), k.pools, k.version],
            args=[fence.value if fence else "", k.events, repr(at), pool.name, _encoder.encode(record), mode],
        )
        outcome = _text(reply[0])
        if outcome == "fenced":
            raise Fenced("lease lost")
        if outcome == "exists":
            raise PoolExists(_pool_decoder.decode(reply[1]))
        if outcome == "missing":
            raise PoolNotFound(pool.name)
        return outcome == "changed", _pool_decoder.decode(reply[1])

    async def remove_pool(self, name: str, *, fence: Lease | None = None) -> PoolSetting:
        """Remove a pool's record: PoolNotFound, or PoolInUse while backends or the route table name it
        (and always for the default pool, which cannot be removed)."""
        if name == DEFAULT_POOL:
            raise PoolInUse(name, reason="the default pool cannot be deleted")
        k = self.keys
        reply = await self._remove_pool(
            keys=[k.lease(fence.name) if fence else k.lease("-"), k.pools, k.version, k.backends, k.routes],
            args=[fence.value if fence else "", k.events, repr(now()), name],
        )
        outcome = _text(reply[0])
        if outcome == "fenced":
            raise Fenced("lease lost")
        if outcome == "missing":
            raise PoolNotFound(name)
        if outcome == "backends":
            raise PoolInUse(name, int(_text(reply[1])))
        if outcome == "routes":
            raise PoolInUse(name)
        return _pool_decoder.decode(reply[1])

    async def set_routes(self, table: RouteTableSetting, *, fence: Lease | None = None) -> bool:
        """Replace the whole route table (atomically: proxies switch from one table to the next);
        PoolNotFound when it names a pool the store does not hold. The table's own checks
        (``shared.config.routing.check_route_table``) are the caller's. Returns whether it changed."""
        k = self.keys
        current = await self.get_routes()
        if current is not None and current.routes == table.routes and current.default_pool == table.default_pool:
            table = current  # (the script answers "unchanged" unless a pool it names went missing)
        else:
            table = msgspec.structs.replace(table, updated_at=now())
        used = sorted({r.pool for r in table.routes} | ({table.default_pool} if table.default_pool else set()))
        reply = await self._set_routes(
            keys=[k.lease(fence.name) if fence else k.lease("-"), k.routes, k.version, k.pools],
            args=[fence.value if fence else "", k.events, repr(now()), _encoder.encode(table), *used],
        )
        outcome = _text(reply[0])
        if outcome == "fenced":
            raise Fenced("lease lost")
        if outcome == "missing_pool":
            raise PoolNotFound(_text(reply[1]))
        return outcome == "changed"

    # -- watching ----------------------------------------------------------------------------

    async def _sync(self, pubsub: _PubSub, chunk: int = SYNC_CHUNK) -> Snapshot:
        """The whole state for the watch, without stalling the caller's event loop: read in chunks
        (:meth:`_chunked_snapshot`), or, after ``SYNC_ATTEMPTS`` chunked reads that could not be made
        consistent (events lost meanwhile), in one atomic read (:meth:`snapshot`)."""
        for _ in range(SYNC_ATTEMPTS):
            snap = await self._chunked_snapshot(pubsub, chunk)
            if snap is not None:
                return snap
        self.sync_fallbacks += 1
        log.warning("chunked re-sync did not converge; reading the state in one step")
        return await self.snapshot()

    async def _chunked_snapshot(self, pubsub: _PubSub, chunk: int) -> Snapshot | None:
        """The whole state, consistent at the version it carries, read in chunks so the caller's loop
        gets a turn between them; None when it could not be made consistent (a message lost).

        ``pubsub`` is subscribed to the events channel already. The version (with the algorithm) is read
        first, then the backends chunk by chunk (``SCAN_VIEWS``: HSCAN, each backend with its health and
        ejection); the chunks are not consistent with each other, but every change made after the first
        read published an event, which is buffered meanwhile. Once the version is read again, the events
        up to it are replayed over the chunks in order. Each event carries the full new value of what it
        changes (a backend record, a health, an ejection or none, the algorithm; a removal drops all of a
        backend), so whatever state a chunk saw, the last event touching it sets its final value, and
        what no event touched was read as it is: the result is the state at the last replayed version.
        """
        connects = pubsub.connects
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(k.version)
            pipe.get(k.algorithm)
            pipe.hgetall(k.pools)
            pipe.get(k.routes)
            raw_version, raw_algorithm, raw_pools, raw_routes = await pipe.execute()
        start = int(raw_version or 0)
        algorithm = _algorithm_decoder.decode(raw_algorithm) if raw_algorithm else AlgorithmSetting()
        pools = _decode_pools(raw_pools)
        routes = _routes_decoder.decode(raw_routes) if raw_routes else None
        backends: dict[str, BackendView] = {}
        events: list[Event] = []
        cursor: Any = 0
        while True:
            cursor, body = await self._scan_views(keys=[k.backends, k.health, k.ejections], args=[cursor, chunk])
            for view in _views_decoder.decode(body):
                backends[view.backend.address] = view
            if not await self._buffer_events(pubsub, events, start, wait=0.0):
                return None
            if int(cursor) == 0:
                break
        end = await self.version()
        if end < start:  # the store went back meanwhile (flushed, restarted empty)
            return None
        deadline = time.monotonic() + SYNC_EVENTS_WAIT_SEC
        while (events[-1].version if events else start) < end:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._buffer_events(pubsub, events, start, wait=remaining):
                log.info("events of a chunked re-sync missing; reading again", version=end)
                return None
        if pubsub.connects != connects:  # re-subscribed: what was published meanwhile is lost
            return None
        for i, event in enumerate(events):
            if event.version != start + 1 + i:
                return None  # a gap: a message lost
        for i, event in enumerate(events):
            apply_event(backends, event)
            if event.kind == "algorithm" and event.algorithm is not None:
                algorithm = event.algorithm
            routes = apply_settings_event(pools, routes, event)
            if i % REPLAY_BATCH == REPLAY_BATCH - 1:
                await asyncio.sleep(0)
        return Snapshot(
            version=events[-1].version if events else start,
            backends=backends,
            algorithm=algorithm,
            pools=pools,
            routes=routes,
        )

    @staticmethod
    async def _buffer_events(pubsub: _PubSub, events: list[Event], after: int, *, wait: float) -> bool:
        """Append to ``events`` what the channel holds with a version above ``after`` (waiting up to
        ``wait`` seconds for the first message; then only what is already there). False when a
        message cannot be decoded."""
        timeout = wait
        while True:
            message = await pubsub.get_message(timeout=timeout)
            if message is None:
                return True
            timeout = 0.0
            if message.get("type") != "message":
                continue
            try:
                event = _event_decoder.decode(message["data"])
            except msgspec.DecodeError:
                log.warning("undecodable event during a re-sync")
                return False
            if event.version > after:
                events.append(event)

    async def watch(
        self,
        *,
        resync_interval: float = 30.0,
        max_backoff: float = 0.5,
        on_down: Callable[[BaseException], None] | None = None,
    ) -> AsyncIterator[Snapshot | Event]:
        """Yield a full Snapshot, then Events; a fresh Snapshot after every reconnect.

        Pub/sub is only a hint: the channel is subscribed *before* the snapshot is read so nothing
        falls in between (the snapshot itself is read in chunks, see :meth:`_chunked_snapshot`, so a
        reader of 100,000 backends keeps its loop), events already covered by the snapshot are
        skipped, and a gap in event
        versions (a message lost) or a version that moved without an event (checked every
        ``resync_interval``) triggers a full re-read. While Redis is unreachable this retries with
        exponential backoff capped at ``max_backoff`` (short: a reconnect attempt is cheap, and every
        proxy must re-sync within about a second of Redis returning) and yields nothing, so callers
        keep their last view; ``on_down`` is called when each outage begins (the next Snapshot ends it).
        """
        backoff = 0.05
        down_since: float | None = None
        while True:
            pubsub = _PubSub(self.redis.connection_pool, ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.events)
                snap = await self._sync(pubsub)
                connects = pubsub.connects  # (a re-subscription during the read made it read again)
                if down_since is not None:
                    log.info("redis reachable again", down_sec=round(time.monotonic() - down_since, 3))
                    down_since = None
                backoff = 0.05
                yield snap
                last = snap.version
                next_check = time.monotonic() + resync_interval
                while True:
                    timeout = max(0.0, next_check - time.monotonic())
                    message = await pubsub.get_message(timeout=min(timeout, 1.0))
                    resync = pubsub.connects != connects
                    if resync:
                        log.info("events channel reconnected; re-syncing")
                    elif message is None:
                        if time.monotonic() < next_check:
                            continue
                        next_check = time.monotonic() + resync_interval
                        resync = await self.version() != last
                    elif message.get("type") != "message":
                        continue
                    else:
                        try:
                            event: Event | None = _event_decoder.decode(message["data"])
                        except msgspec.DecodeError:
                            log.warning("undecodable event; re-syncing")
                            event = None
                        if event is not None and event.version <= last:
                            continue
                        if event is not None and event.version == last + 1:
                            last = event.version
                            yield event
                            continue
                        resync = True  # a gap (a message lost) or an undecodable one
                    if resync:
                        snap = await self._sync(pubsub)
                        connects = pubsub.connects
                        last = snap.version
                        yield snap
            except UNAVAILABLE as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("redis unreachable; keeping the last view", error=str(exc) or type(exc).__name__)
                    if on_down is not None:
                        on_down(exc)
                await asyncio.sleep(backoff * (0.75 + 0.5 * random.random()))
                backoff = min(backoff * 2, max_backoff)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- replicas and counters ---------------------------------------------------------------

    async def push_counters(
        self,
        info: ReplicaInfo,
        seq: int,
        deltas: Mapping[str, int],
        absolute: Mapping[str, int],
        ttl: float,
        *,
        force_absolute: bool = False,
        total_deltas: Mapping[str, int] | None = None,
        totals: Mapping[str, int] | None = None,
        dropped_totals: Sequence[str] = (),
    ) -> str:
        """Heartbeat plus one batch of in-flight deltas (HINCRBY), applied at most once per ``seq``.

        ``absolute`` is the replica's exact current count per backend; it is sent only when Redis
        answers that the replica's hash is missing (first push, or expired during an outage), or
        with ``force_absolute``. ``total_deltas``/``totals`` do the same for the replica's monotonic
        request totals (keys ``"address|class"``), which expire with the replica too;
        ``dropped_totals`` are totals keys to delete (of backends that left).
        """
        k = self.keys
        ttl_ms = max(1, int(ttl * 1000))
        info_json = _encoder.encode(msgspec.structs.replace(info, inflight={}, totals={}, heartbeat_at=now()))
        flat: list[Any] = []
        flat_totals: list[Any] = []
        if not force_absolute:
            for addr, delta in deltas.items():
                if delta:
                    flat += [addr, delta]
            for name, delta in (total_deltas or {}).items():
                if delta:
                    flat_totals += [name, delta]
        outcome = _text(
            await self._push_counters(
                keys=[k.replicas, k.replica(info.id), k.inflight(info.id), k.totals(info.id)],
                args=[
                    info.id,
                    ttl_ms,
                    info_json,
                    seq,
                    len(flat) // 2,
                    len(flat_totals) // 2,
                    *flat,
                    *flat_totals,
                    *([] if force_absolute else dropped_totals),
                ],
            )
        )
        if outcome == "resync" or force_absolute:
            flat = []
            for addr, count in absolute.items():
                flat += [addr, count]
            flat_totals = []
            for name, total in (totals or {}).items():
                flat_totals += [name, total]
            await self._push_absolute(
                keys=[k.inflight(info.id), k.totals(info.id)],
                args=[ttl_ms, seq, len(flat) // 2, *flat, *flat_totals],
            )
        return outcome

    async def replicas(self, service: str | None = None) -> list[ReplicaInfo]:
        """Live replicas with their in-flight counts and request totals; lapsed ones are pruned."""
        rows = await self._read_replicas(keys=[self.keys.replicas], args=[f"{self.keys.namespace}:"])
        out: list[ReplicaInfo] = []
        for _id, info, flat, flat_totals in rows:
            replica = _replica_decoder.decode(info)
            counts: dict[str, int] = {}
            for i in range(0, len(flat), 2):
                name = _text(flat[i])
                if name != "__seq":
                    counts[name] = int(flat[i + 1])
            replica.inflight = counts
            replica.totals = {_text(flat_totals[i]): int(flat_totals[i + 1]) for i in range(0, len(flat_totals), 2)}
            if service is None or replica.service == service:
                out.append(replica)
        return out

    async def replica_infos(self, service: str | None = None) -> list[ReplicaInfo]:
        """Live replicas without their counters (cheap: no in-flight or totals hashes read)."""
        rows = await self._read_replica_infos(keys=[self.keys.replicas], args=[f"{self.keys.namespace}:"])
        infos = [_replica_decoder.decode(raw) for raw in rows]
        return [r for r in infos if service is None or r.service == service]

    async def global_inflight(self, exclude: str | None = None) -> dict[str, int]:
        """Sum of live replicas' in-flight counts per backend (optionally leaving one replica out)."""
        # Every proxy calls this every refresh interval: summed in Redis, one flat reply, no decoding.
        flat = await self._global_inflight(keys=[self.keys.replicas], args=[f"{self.keys.namespace}:", exclude or ""])
        return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def deregister(self, replica_id: str) -> None:
        k = self.keys
        await self._deregister(
            keys=[k.replicas, k.replica(replica_id), k.inflight(replica_id), k.totals(replica_id)], args=[replica_id]
        )

    # -- leases ------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl: float, held: Lease | None = None) -> Lease | None:
        """Take or renew the lease ``name``; None when another holder has it."""
        k = self.keys
        ok, value = await self._acquire(
            keys=[k.lease(name), k.fence(name)],
            args=[holder, max(1, int(ttl * 1000)), held.value if held else ""],
        )
        return Lease(name, _text(value)) if int(ok) == 1 else None

    async def release_lease(self, lease: Lease) -> bool:
        return bool(await self._release(keys=[self.keys.lease(lease.name)], args=[lease.value]))

    async def lease_holders(self, names: list[str]) -> list[str | None]:
        """The current values of several leases (None: free), in one round trip."""
        values = await self.redis.mget([self.keys.lease(n) for n in names])
        return [_text(v) if v is not None else None for v in values]

    async def lease_holder(self, name: str) -> str | None:
        raw = await self.redis.get(self.keys.lease(name))
        return _text(raw) if raw is not None else None
