"""`GET /backends` as bytes: each backend's JSON encoded once per change, the list joined once per change.

A :class:`Listing` reads a :class:`~shared.mirror.Mirror` (the admin's copy of the store) and the
global in-flight counts. Each backend's ``BackendOut`` JSON is kept with what it was made from (the
``BackendView`` object, replaced on every change, and the in-flight count); ``alive`` and ``ejected``
also depend on time, so a backend whose ejection is running is encoded again when it ends. The whole
list is the fragments joined in address order, kept until something changes, so a read of an unchanged
list is a dict lookup. ``generation`` moves on every change: it makes the ETag.

Each pool's addresses are kept sorted too (``pool`` in a query: ``GET /backends`` is the default pool's,
``GET /pools/{name}/backends`` another's), grouped once after a Snapshot and kept up to date by the
changes (a backend added, removed or moved to another pool), so a pool's list costs what the whole list
does. Per-pool counts (``GET /pools``) are made once per change.

Filtered and paginated reads (``health``, ``state``, ``origin``, ``limit``, ``cursor``) join the
fragments that match; their answers are kept per query until the next change. The cursor is the last
address of the previous page: pages are in address order and a page starts after the cursor, so
backends added or removed meanwhile never shift a page (nothing is skipped or repeated that existed
throughout).

A client that accepts gzip gets large answers compressed (:meth:`Listing.gzipped`: once per answer, in
a worker thread, about 5 ms and 1/19 of the size at 10,000 backends), which spares the sockets and the
CPU sending them most of the bytes.
"""

from __future__ import annotations

import asyncio
import bisect
import gzip
import heapq
import itertools
import os
from collections.abc import Iterator
from typing import NamedTuple

import msgspec

from services.admin.schemas import BackendOut
from shared.mirror import Mirror
from shared.models import BackendView

_encoder = msgspec.json.Encoder()
_QUERY_CACHE = 256  # distinct filtered/paged answers kept per generation
GZIP_MIN_BYTES = 8192  # smaller answers are sent as they are


class Query(NamedTuple):
    health: str | None = None
    state: str | None = None
    origin: str | None = None
    limit: int | None = None
    cursor: str | None = None
    pool: str | None = None  # None: every pool's backends

    @property
    def plain(self) -> bool:
        return self == _PLAIN


_PLAIN = Query()


class Page(NamedTuple):
    body: bytes
    next_cursor: str | None  # the cursor of the next page, None on the last one


class Listing:
    def __init__(self, mirror: Mirror, *, start_healthy: bool) -> None:
        self.mirror = mirror
        self.start_healthy = start_healthy
        self.inflight: dict[str, int] = {}
        self.generation = 0
        # ETags of another process (a restarted admin) never match ours.
        self._epoch = os.urandom(4).hex()
        self._order: list[str] | None = None  # sorted addresses; None: to sort again
        self._pool_orders: dict[str, list[str]] | None = None  # sorted addresses by pool; None: to group again
        # Per-pool (backends, usable), the generation they were counted at and when they go stale (an ejection ends).
        self._counts: tuple[int, float, dict[str, tuple[int, int]]] | None = None
        self._fragments: dict[str, tuple[BackendView, int, bytes]] = {}
        self._expiries: list[tuple[float, str]] = []  # (ejection end, address): heap
        self._pages: dict[Query, Page] = {}
        # Compressed answers, by the identity of the body they compress (a body is replaced on change).
        self._gzipped: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}

    # -- changes -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Everything may have changed (a Snapshot was applied)."""
        self._order = None
        self._pool_orders = None
        self._changed()

    def added(self, address: str) -> None:
        if self._order is not None:
            _insert(self._order, address)
        self._pool_insert(address)
        self._changed()

    def removed(self, address: str, pool: str | None = None) -> None:
        """``address`` is gone; ``pool``: the pool it was in (None: unknown, the pools are grouped again)."""
        self._fragments.pop(address, None)
        if self._order is not None:
            _remove(self._order, address)
        if self._pool_orders is not None:
            if pool is None:
                self._pool_orders = None
            else:
                _remove(self._pool_orders.get(pool, []), address)
        self._changed()

    def touched(self, address: str = "", pool: str | None = None) -> None:
        """A backend changed in place (its fragment is re-made: its view is a new object); ``pool``: the
        pool it was in before the change (it may have moved)."""
        view = self.mirror.backends.get(address) if address else None
        if view is not None and pool is not None and view.backend.pool != pool and self._pool_orders is not None:
            _remove(self._pool_orders.get(pool, []), address)
            self._pool_insert(address)
        self._changed()

    def _pool_insert(self, address: str) -> None:
        view = self.mirror.backends.get(address)
        if self._pool_orders is not None and view is not None:
            _insert(self._pool_orders.setdefault(view.backend.pool, []), address)

    def set_inflight(self, counts: dict[str, int]) -> bool:
        """New global in-flight counts; True when any shown count changed."""
        if counts == self.inflight:
            return False
        self.inflight = counts
        self._changed()
        return True

    def _changed(self) -> None:
        self.generation += 1
        self._pages.clear()
        self._gzipped.clear()

    @property
    def etag(self) -> str:
        return f'"{self._epoch}-{self.generation}"'

    # -- reads -------------------------------------------------------------------------------

    def order(self) -> list[str]:
        if self._order is None:
            self._order = sorted(self.mirror.backends)
            live = self.mirror.backends
            for address in [a for a in self._fragments if a not in live]:
                del self._fragments[address]
        return self._order

    def pool_order(self, pool: str) -> list[str]:
        """``pool``'s addresses, sorted."""
        if self._pool_orders is None:
            groups: dict[str, list[str]] = {}
            views = self.mirror.backends
            for address in self.order():  # (in order: each group is sorted)
                groups.setdefault(views[address].backend.pool, []).append(address)
            self._pool_orders = groups
        return self._pool_orders.get(pool, [])

    def pool_counts(self, at: float) -> dict[str, tuple[int, int]]:
        """(backends, usable) by pool, counted once per change (and again when an ejection ends)."""
        cached = self._counts
        if cached is not None and cached[0] == self.generation and at < cached[1]:
            return cached[2]
        counts: dict[str, tuple[int, int]] = {}
        stale = float("inf")
        start_healthy = self.start_healthy
        for view in self.mirror.backends.values():
            pool = view.backend.pool
            total, usable = counts.get(pool, (0, 0))
            counts[pool] = (total + 1, usable + view.usable(start_healthy=start_healthy, at=at))
            ejection = view.ejection
            if ejection is not None and at < ejection.until < stale:
                stale = ejection.until
        self._counts = (self.generation, stale, counts)
        return counts

    def expire(self, at: float) -> None:
        """Forget fragments whose ejection has ended by ``at`` (their alive/ejected changed)."""
        expiries = self._expiries
        if not expiries or expiries[0][0] > at:
            return
        while expiries and expiries[0][0] <= at:
            _, address = heapq.heappop(expiries)
            self._fragments.pop(address, None)
        self._changed()

    def fragment(self, address: str, at: float) -> bytes | None:
        view = self.mirror.backends.get(address)
        if view is None:
            return None
        count = self.inflight.get(address, 0)
        cached = self._fragments.get(address)
        if cached is not None and cached[0] is view and cached[1] == count:
            return cached[2]
        body = _encoder.encode(BackendOut.of(view, conn_count=count, start_healthy=self.start_healthy, at=at))
        ejection = view.ejection
        if ejection is not None and ejection.until > at:
            heapq.heappush(self._expiries, (ejection.until, address))
        self._fragments[address] = (view, count, body)
        return body

    def out(self, address: str, at: float) -> BackendOut | None:
        body = self.fragment(address, at)
        return None if body is None else msgspec.json.decode(body, type=BackendOut)

    async def gzipped(self, body: bytes) -> bytes:
        """``body`` gzipped, compressed once (concurrent readers share the work) off the event loop."""
        entry = self._gzipped.get(id(body))
        if entry is None or entry[0] is not body:
            if len(self._gzipped) >= _QUERY_CACHE:
                self._gzipped.clear()
            entry = (body, asyncio.ensure_future(_compress(body)))
            self._gzipped[id(body)] = entry
        return await asyncio.shield(entry[1])

    def page(self, query: Query, at: float) -> Page:
        """The JSON list for ``query`` (the whole list for the plain query)."""
        self.expire(at)
        cached = self._pages.get(query)
        if cached is not None:
            return cached
        order = self.order() if query.pool is None else self.pool_order(query.pool)
        start = bisect.bisect_right(order, query.cursor) if query.cursor is not None else 0
        addresses: Iterator[str] = itertools.islice(order, start, None)
        if query.health is not None or query.state is not None or query.origin is not None:
            views = self.mirror.backends
            addresses = (a for a in addresses if _matches(views[a], query))
        if query.limit is not None:
            taken = list(itertools.islice(addresses, query.limit + 1))
            more = len(taken) > query.limit
            taken = taken[: query.limit]
            next_cursor = taken[-1] if more else None
        else:
            taken, next_cursor = list(addresses), None
        fragment = self.fragment
        parts = [fragment(a, at) or b"" for a in taken]
        page = Page(b"[" + b",".join(parts) + b"]", next_cursor)
        if len(self._pages) >= _QUERY_CACHE:
            self._pages.clear()
        self._pages[query] = page
        return page


def _insert(order: list[str], address: str) -> None:
    i = bisect.bisect_left(order, address)
    if i == len(order) or order[i] != address:
        order.insert(i, address)


def _remove(order: list[str], address: str) -> None:
    i = bisect.bisect_left(order, address)
    if i < len(order) and order[i] == address:
        del order[i]


async def _compress(body: bytes) -> bytes:
    return await asyncio.to_thread(gzip.compress, body, 1, mtime=0)


def _matches(view: BackendView, query: Query) -> bool:
    if query.health is not None and view.health.status != query.health:
        return False
    if query.state is not None and view.backend.state != query.state:
        return False
    return query.origin is None or view.backend.origin == query.origin
