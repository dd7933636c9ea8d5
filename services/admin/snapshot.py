"""The admin's local snapshot of the store, fed by ``Store.watch()``: every read is served from it.

One watch (one Redis pub/sub connection) per admin process, as in the proxies: a Snapshot, then
Events, a fresh Snapshot after every reconnect (``shared.mirror.Mirror`` applies them). Each change
is also fanned out in process to the open ``/events`` streams (:class:`Subscriber`): a stream holds
no Redis connection, so no number of readers can use up the pool that writes need.

While the snapshot is not *synced* (before the first Snapshot, and from the moment the watch loses
Redis until the next Snapshot) reads fall back to reading Redis, so a read never shows a state older
than Redis without saying so: while Redis is down they answer 503, as before.

A write through the admin returns once the snapshot has seen it (:meth:`AdminSnapshot.caught_up`):
a client that reads after its write sees the write. Writes made elsewhere show up when their event
arrives (about a millisecond later).

In-flight counts are not versioned state (each proxy pushes its own): they are read every
``inflight_interval`` seconds with one call.

A Snapshot of a large pool replaces every ``BackendView``: the replaced ones are freed a slice per loop
turn (:meth:`AdminSnapshot.retire`), as in the proxy; 100,000 freed at once stall the loop 15-30 ms.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator
from typing import cast

import msgspec

from services.admin.listing import Listing, Query
from services.admin.schemas import AlgorithmOut, PoolOut
from shared.config.durations import enc_hook
from shared.config.routing import DEFAULT_POOL
from shared.logs import get_logger
from shared.mirror import Mirror
from shared.models import BackendView, Event, Snapshot
from shared.store import STORE_ERRORS, Store

log = get_logger("admin")
_encoder = msgspec.json.Encoder(enc_hook=enc_hook)  # (a pool_set event holds durations)
RETIRE_SLICE = 2_000  # replaced views freed per loop turn after a Snapshot

KEEPALIVE = b": keep-alive\n\n"


class TooManyStreams(Exception):
    def __init__(self, open_streams: int) -> None:
        self.open_streams = open_streams
        super().__init__(f"too many open event streams ({open_streams}); try again later")


class Subscriber:
    """One ``/events`` stream's queue of encoded messages. A stream that falls ``limit`` messages
    behind is not buffered further: it gets a fresh snapshot when it reads again."""

    __slots__ = ("closed", "limit", "queue", "resync", "wake")

    def __init__(self, limit: int) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.limit = limit
        self.resync = True  # the first message is a snapshot
        self.closed = False
        self.wake = asyncio.Event()

    def push(self, message: bytes) -> None:
        if not self.resync:
            if len(self.queue) >= self.limit:
                self.queue.clear()
                self.resync = True
            else:
                self.queue.append(message)
        self.wake.set()


def sse(kind: str, version: int, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (version, kind.encode(), data)


class AdminSnapshot:
    def __init__(self, *, start_healthy: bool, max_streams: int = 256, stream_queue: int = 1024) -> None:
        self.mirror = Mirror()
        self.listing = Listing(self.mirror, start_healthy=start_healthy)
        self.synced = False
        self.max_streams = max_streams
        self.stream_queue = stream_queue
        self.subscribers: set[Subscriber] = set()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (version, woken when held)
        self.snapshots = 0  # Snapshots applied (1, plus one per re-sync)
        self._snapshot_message: tuple[int, bytes] | None = None  # (listing generation, message)
        self._retired: list[dict[str, BackendView]] = []  # replaced by Snapshots, to free (retire())

    # -- input -------------------------------------------------------------------------------

    def apply(self, item: Snapshot | Event) -> None:
        mirror, listing = self.mirror, self.listing
        if isinstance(item, Snapshot):
            previous = mirror.backends
            mirror.apply(item)
            if len(previous) > RETIRE_SLICE:
                self._retired.append(previous)
            listing.reset()
            self.synced = True
            self.snapshots += 1
            for sub in self.subscribers:
                sub.queue.clear()
                sub.resync = True
                sub.wake.set()
        else:
            address = item.address or ""
            before = mirror.backends.get(address)
            mirror.apply(item)
            exists = address in mirror.backends
            pool = before.backend.pool if before is not None else None
            if exists and before is None:
                listing.added(address)
            elif before is not None and not exists:
                listing.removed(address, pool)
            else:
                listing.touched(address, pool)
            if self.subscribers:
                message = sse(item.kind, item.version, _encoder.encode(item))
                for sub in self.subscribers:
                    sub.push(message)
        self._notify()

    @property
    def retiring(self) -> bool:
        """Views replaced by a Snapshot wait to be freed (:meth:`retire`)."""
        return bool(self._retired)

    def retire(self, budget: int = RETIRE_SLICE) -> bool:
        """Free up to ``budget`` views a Snapshot replaced; True while some remain."""
        retired = self._retired
        while retired and budget > 0:
            previous = retired[0]
            for _ in range(min(budget, len(previous))):
                previous.popitem()
            budget -= RETIRE_SLICE
            if not previous:
                retired.pop(0)
        return bool(retired)

    async def _retire_all(self) -> None:
        for _ in itertools.count():
            await asyncio.sleep(0)  # (a slice per loop turn, the first not in the Snapshot's)
            if not self.retire():
                return

    def outage(self, exc: BaseException) -> None:
        """The watch lost Redis: reads go to Redis (and answer 503) until the next Snapshot."""
        self.synced = False

    def _notify(self) -> None:
        if not self._waiters or not self.synced:
            return
        held = self.mirror.version
        waiting = []
        for version, future in self._waiters:
            if version > held:
                waiting.append((version, future))
            elif not future.done():
                future.set_result(None)
        self._waiters = waiting

    async def caught_up(self, version: int, timeout: float) -> bool:
        """Wait until the snapshot is synced and holds ``version`` (a write's); False at the timeout."""
        if self.synced and self.mirror.version >= version:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (version, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return True

    async def follow(self, store: Store) -> None:
        """Apply the store's changes until cancelled (``Store.watch`` rides out outages)."""
        while True:
            watch = cast(AsyncGenerator[Snapshot | Event, None], store.watch(on_down=self.outage))
            try:
                async for item in watch:
                    self.apply(item)
                    if self._retired:
                        await self._retire_all()
            except Exception as exc:  # a bug or an unexpected reply: log, re-sync from scratch
                self.outage(exc)
                log.error("store watch failed; restarting it", error=str(exc) or repr(exc))
                await asyncio.sleep(1.0)
            finally:
                await watch.aclose()

    async def follow_inflight(self, store: Store, interval: float) -> None:
        """Read the global in-flight counts every ``interval`` until cancelled."""
        while True:
            with contextlib.suppress(*STORE_ERRORS):  # the last counts stay; the watch reports the outage
                self.listing.set_inflight(await store.global_inflight())
            await asyncio.sleep(interval)

    # -- event streams -----------------------------------------------------------------------

    def subscribe(self) -> Subscriber:
        """A new stream's subscription; TooManyStreams at the cap (checked and taken at once)."""
        if len(self.subscribers) >= self.max_streams:
            raise TooManyStreams(len(self.subscribers))
        sub = Subscriber(self.stream_queue)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close_streams(self) -> None:
        for sub in self.subscribers:
            sub.closed = True
            sub.wake.set()

    def snapshot_message(self, at: float) -> bytes:
        """The ``snapshot`` event: the whole state, encoded once per change."""
        listing = self.listing
        body = listing.page(Query(), at).body  # (expires ejections first: may move the generation)
        cached = self._snapshot_message
        if cached is not None and cached[0] == listing.generation:
            return cached[1]
        version = self.mirror.version
        data = b'{"version":%d,"backends":%s,"algorithm":%s,"pools":%s,"routes":%s}' % (
            version,
            body,
            _encoder.encode(AlgorithmOut.of(self.mirror.algorithm)),
            _encoder.encode(self.pools_out(at)),
            _encoder.encode(self.mirror.routes),
        )
        message = sse("snapshot", version, data)
        self._snapshot_message = (listing.generation, message)
        return message

    def pools_out(self, at: float) -> list[PoolOut]:
        """Every pool the snapshot knows (the default pool, the stored ones, and any a backend names), the
        default first, then by name, with their counts."""
        mirror = self.mirror
        counts = self.listing.pool_counts(at)
        names = sorted((set(mirror.pools) | set(counts)) - {DEFAULT_POOL})
        return [
            PoolOut.of(name, mirror.pools.get(name), mirror.algorithm, counts.get(name, (0, 0)))
            for name in [DEFAULT_POOL, *names]
        ]

    def next_message(self, sub: Subscriber) -> bytes | None:
        """What ``sub`` reads next, or None when it must wait."""
        if sub.resync:
            if not self.synced:
                return None
            sub.resync = False
            sub.queue.clear()  # (all older than the snapshot)
            return self.snapshot_message(time.time())
        if sub.queue:
            return sub.queue.popleft()
        return None
