"""Connection limits (circuit breaking) on the data plane: a pool's balancer wrapped in :class:`LimitedBalancer`.

Where: at the pick. A pool with ``max_connections`` (``pools.NAME.max_connections``, or the top-level one for
the default pool), or with a backend that has its own ``max_connections``, gets its balancer wrapped when the
proxy starts (:func:`limit_pools`); every other pool keeps its balancer as it is, so a proxy without limits
runs exactly the bytecodes it ran before (``python -m bench bytecodes``).

What is counted: requests in flight to the pool (and to each limited backend) across all replicas: this
replica's exact count (kept here, at pick and finish) plus the other replicas' as last read from Redis (the
in-flight counts the balancer already refreshes every ``redis.counts_sync_sec``; a limited pool makes the
refresh read them whatever the policy). The admission rule and its error bound are ``circuit.Circuit``'s.

Beyond ``max_connections`` a request waits in this replica's queue (``max_pending``, oldest first) until a
slot frees (a request of the pool ends, or the refresh shows the others' counts fell) or
``queue_timeout_sec`` passes; a request that finds the queue full is refused at once. ``pick`` cannot
wait, so it answers a *ticket*: an ``Upstream`` with a negative port (``-1`` queued, ``-2`` refused, its
address naming the reason) that the attempt turns into a backend with :meth:`LimitedBalancer.wait` where it
would connect (``Attempts.admitted``, for HTTP and TCP alike): a backend, or the reason of a 503
(``X-GoBalancer-Reason``: ``pool-saturated`` when there is no queue, ``queue-full``, ``queue-timeout``;
``backend-saturated`` when every backend the pool could use is at its own limit and the pool has no queue).
A client that leaves while queued gives its place up (the slot, if it was granted meanwhile, too).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from services.proxy.balancer import Balancer, Upstream
from services.proxy.limits.circuit import Circuit, ConnectionLimits
from shared.aio import cancel_and_wait
from shared.config import Config, PoolConfig
from shared.logs import get_logger
from shared.store import STORE_ERRORS

log = get_logger("proxy.limits")

POOL_SATURATED = "pool-saturated"
BACKEND_SATURATED = "backend-saturated"
QUEUE_FULL = "queue-full"
QUEUE_TIMEOUT = "queue-timeout"
REASONS = (POOL_SATURATED, BACKEND_SATURATED, QUEUE_FULL, QUEUE_TIMEOUT)
# What a 503's body says for each reason.
EXPLAINED = {
    POOL_SATURATED: "the pool is at max_connections (no pending queue)",
    BACKEND_SATURATED: "every backend of the pool is at its max_connections",
    QUEUE_FULL: "the pool is at max_connections and its pending queue is full",
    QUEUE_TIMEOUT: "waited queue_timeout_sec for a connection slot",
}
QUEUED_PORT = -1
REFUSED_PORT = -2
# How often the number of live proxy replicas is read (the circuit's estimate of the others' growth).
REPLICAS_EVERY_SEC = 1.0

_REFUSED = {reason: Upstream(reason, "", REFUSED_PORT) for reason in REASONS}


class _Waiter:
    __slots__ = ("deadline", "exclude", "future", "key")

    def __init__(self, key: str, exclude: Collection[str], deadline: float, future: asyncio.Future[Upstream | str]):
        self.key = key
        self.exclude = exclude
        self.deadline = deadline
        self.future = future


class LimitedBalancer:
    """A pool's balancer with its connection limits (see the module docstring)."""

    def __init__(
        self,
        inner: Balancer,
        limits: ConnectionLimits,
        backend_limits: Mapping[str, int] | None = None,
        *,
        name: str = "default",
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inner = inner
        self.name = name
        self.limits = limits
        self.circuit: Circuit[Any] = Circuit(limits)
        self.backend_limits = {a: n for a, n in (backend_limits or {}).items() if n > 0}
        self.loop = loop or asyncio.get_running_loop()
        self.local = 0  # this replica's requests in flight to the pool
        self.per_backend: dict[str, int] = {}  # ... to each limited backend
        self.rejected = dict.fromkeys(REASONS, 0)  # 503s by reason (metrics)
        self._queue: deque[_Waiter] = deque()
        self._tickets: dict[Upstream, _Waiter] = {}
        self._serial = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # (The data plane hears of departed backends through the inner balancer's list, if it has one.)
        self.forget_listeners: list[Any] | None = getattr(inner, "forget_listeners", None)
        # The other replicas' counts: the StoreBalancer's (refreshed by it), else none.
        self._counts = getattr(inner, "counts", None)
        self._others = 0
        if self._counts is not None:
            inner.reads_counts = True  # type: ignore[attr-defined]  # (refresh even for round robin)
            inner.refresh_listeners.append(self.refreshed)  # type: ignore[attr-defined]
            store = getattr(inner, "store", None)
            if store is not None:
                self._tasks.append(self.loop.create_task(self._count_replicas(store)))

    @property
    def hash_key(self) -> str:
        return self.inner.hash_key

    @hash_key.setter
    def hash_key(self, value: str) -> None:
        self.inner.hash_key = value

    @property
    def pending(self) -> int:
        """Requests waiting for a slot."""
        return len(self._tickets)

    # -- the balancer interface --------------------------------------------------------------------

    def pick(self, key: str, exclude: Collection[str] = ()) -> Upstream | None:
        if not self._tickets and self.circuit.has_room(self.local, self._others):  # (none waiting: never ahead)
            upstream = self._pick(key, exclude)
            if upstream is not _REFUSED[BACKEND_SATURATED]:
                return upstream
            if not self.limits.max_pending:
                self.rejected[BACKEND_SATURATED] += 1
                return upstream
        if len(self._tickets) >= self.limits.max_pending:
            reason = QUEUE_FULL if self.limits.max_pending else POOL_SATURATED
            self.rejected[reason] += 1
            return _REFUSED[reason]
        self._serial += 1
        ticket = Upstream(f"(queued #{self._serial})", "", QUEUED_PORT)
        waiter = _Waiter(key, exclude, self.loop.time() + self.limits.queue_timeout_sec, self.loop.create_future())
        self._queue.append(waiter)
        self._tickets[ticket] = waiter
        if self._timer is None:
            self._timer = self.loop.call_at(waiter.deadline, self._expire)
        return ticket

    def finished(self, upstream: Upstream, ok: bool = True, latency: float | None = None) -> None:
        if upstream.port < 0:
            return  # a ticket: the waiter is removed by wait()
        self.local -= 1
        address = upstream.address
        if address in self.per_backend:
            self.per_backend[address] -= 1
        self.inner.finished(upstream, ok, latency)
        if self._queue:
            self._grant()

    async def wait(self, ticket: Upstream) -> Upstream | str:
        """A ticket's backend once a slot is free, or the reason of its 503."""
        if ticket.port == REFUSED_PORT:
            return ticket.address
        waiter = self._tickets.get(ticket)
        if waiter is None:
            return QUEUE_TIMEOUT
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            granted = future.result() if future.done() and not future.cancelled() else None
            if isinstance(granted, Upstream):
                self.finished(granted)  # granted, but the client left: the slot goes on
            raise
        finally:
            self._tickets.pop(ticket, None)
            waiter.future.cancel()  # (a no-op when done) so _grant skips it

    # -- admission ---------------------------------------------------------------------------------

    def _pick(self, key: str, exclude: Collection[str]) -> Upstream | None:
        """A backend from the inner balancer, skipping those at their own limit; counted here."""
        limits = self.backend_limits
        upstream = self.inner.pick(key, exclude)
        if limits and upstream is not None:
            tried: list[str] = []
            others = self._counts.others if self._counts is not None else {}
            while upstream is not None:
                address = upstream.address
                cap = limits.get(address)
                if not cap or self.per_backend.get(address, 0) + others.get(address, 0) < cap:
                    break
                self.inner.finished(upstream, True, None)  # (not this one after all)
                tried.append(address)
                upstream = self.inner.pick(key, [*exclude, *tried])
            else:
                return _REFUSED[BACKEND_SATURATED] if tried else None
            if upstream.address in limits:
                self.per_backend[upstream.address] = self.per_backend.get(upstream.address, 0) + 1
        if upstream is not None:
            self.local += 1
        return upstream

    def _grant(self) -> None:
        """Start the oldest waiters while there is room."""
        queue = self._queue
        now = self.loop.time()
        while queue:
            waiter = queue[0]
            if waiter.future.done():
                queue.popleft()
                continue
            if waiter.deadline <= now or not self.circuit.has_room(self.local, self._others):
                return
            upstream = self._pick(waiter.key, waiter.exclude)
            if upstream is _REFUSED[BACKEND_SATURATED]:
                return  # every usable backend is at its own limit: wait for one to free
            queue.popleft()
            waiter.future.set_result(upstream if upstream is not None else "")  # ("": a plain 503)

    def _expire(self) -> None:
        self._timer = None
        queue = self._queue
        now = self.loop.time()
        while queue and (queue[0].future.done() or queue[0].deadline <= now):
            waiter = queue.popleft()
            if not waiter.future.done():
                waiter.future.set_result(QUEUE_TIMEOUT)
                self.rejected[QUEUE_TIMEOUT] += 1
        if queue:
            self._timer = self.loop.call_at(queue[0].deadline, self._expire)

    def refreshed(self) -> None:
        """The other replicas' counts were just read (``StoreBalancer.refresh``)."""
        assert self._counts is not None
        others = self._counts.others
        self._others = sum(others.values())  # (the pool is the balancer's: every address it counts)
        self.circuit.refreshed(self.local, self.circuit.replicas)
        if self._queue:
            self._grant()

    async def _count_replicas(self, store: Any) -> None:
        while True:
            with contextlib.suppress(*STORE_ERRORS):
                infos = await store.replica_infos("proxy")
                self.circuit.replicas = max(1, len(infos))
            await asyncio.sleep(REPLICAS_EVERY_SEC)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await cancel_and_wait(self._tasks)  # (again and again if need be: 3.11 can lose a cancel in redis-py)


def connection_limits(pool: PoolConfig) -> tuple[ConnectionLimits, dict[str, int]] | None:
    """A pool's limits and its backends' own, or None when it has none (its balancer stays unwrapped)."""
    backends = {b.address: b.max_connections for b in pool.backends if b.max_connections}
    if not pool.max_connections and not backends:
        return None
    limits = ConnectionLimits(
        max_connections=pool.max_connections, max_pending=pool.max_pending, queue_timeout_sec=pool.queue_timeout_sec
    )
    return limits, backends


def limit_pools(
    config: Config, balancer: Balancer, pools: Mapping[str, Balancer]
) -> tuple[Balancer, dict[str, Balancer], list[LimitedBalancer]]:
    """The default pool's balancer and the named pools', each wrapped when it has connection limits; and
    the wrappers (metrics, close)."""
    wrapped: list[LimitedBalancer] = []
    configs = config.pool_configs()

    def wrap(name: str, inner: Balancer) -> Balancer:
        found = connection_limits(configs[name]) if name in configs else None  # (limits are the config's)
        if found is None:
            return inner
        limited = LimitedBalancer(inner, found[0], found[1], name=name)
        wrapped.append(limited)
        return limited

    default = wrap("default", balancer)
    return default, {name: wrap(name, b) for name, b in pools.items()}, wrapped
