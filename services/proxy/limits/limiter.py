"""One rate-limit rule's limiter: decides locally, reconciles with Redis in batches. Pure: no I/O, no clock.

The algorithm
-------------
**Sliding window counter** (a fixed window with interpolation). Time is cut into windows of the rule's
length ``W``, aligned on the Redis clock so every replica counts into the same window. Redis holds one
counter per key and window (``NS:rl:RULE:WINDOW:KEY``, ``INCRBY``, expiring after two windows). A key's
traffic over the last ``W`` seconds is estimated as::

    estimate(t) = P * (1 - f(t)) + C(t)

with ``P`` the count of the previous window, ``C`` the current window's and ``f(t)`` the elapsed fraction
of the current window; a request is admitted while ``estimate < Q`` (``Q`` = rate + burst).
Why this counter: a fixed window admits up to ``2Q`` in ``W`` seconds across a boundary; an exact sliding
log keeps a timestamp per request (memory grows with the rate); a token bucket's state is not additive,
so replicas could not merge it with one ``INCRBY``. Window counters are additive (each replica adds its
own admissions), expire by themselves, and the interpolation assumes the previous window's requests were
evenly spread: the error is at most ``P * f`` shifted within one window, and under a steady overload the
count of every window converges to exactly ``Q`` (each window admits ``Q - P(1-f)`` by time ``f``).

**Across replicas, without a round trip.** Each replica keeps per key: ``G`` the current window's global
count as last read from Redis (it includes what this replica pushed), its own admissions not pushed yet
(``unsynced``), ``P`` and a **share** ``s`` of the key's traffic that is its own. Between two syncs the
replica admits while::

    unsynced < s * (Q - P * (1 - f(t)) - G)

i.e. it may take its share of what was left at the last sync plus its share of what the sliding window
frees since (the ``P`` term decays). Every sync interval (``rate_limits.sync_sec``, 100 ms) one script
pushes each active key's unsynced count (``INCRBY``) and reads ``G`` and ``P`` back. ``s`` is this
replica's part of the key's global growth between two reads (its pushes / the counter's increase),
smoothed (half old, half new), and never below ``1 / live replicas``. The shares of the replicas
sum to about 1, so between two syncs they admit together about what was left: with 3 replicas each
offered 3x the limit, every window admits ``Q`` within a few percent (the test measures 0.95-1.05).
A replica alone has ``s = 1`` and admits the full ``Q``. Keys with a sleeping replica (share below
``1/n``) may be over-admitted by ``(sum of shares - 1)`` of what is left per sync interval until the shares
adapt (one or two intervals).

Error bound. Within a window, the global count exceeds ``Q`` by at most what the replicas admit beyond
their true part of the slack during one sync interval plus one round trip: ``(sum_i s_i - 1) * R`` with
``R`` the slack at the last sync, plus the admissions of one round trip that the reads have not seen yet
(``(n - 1) * Q * rtt / W`` at most). With accurate shares (steady traffic) the first term is ~0; the
share estimate's noise is about ``1 / sqrt(admits per interval)``, which is why it is smoothed.

**Redis down.** A failed sync marks the limiter degraded: every replica falls back to
``Q / n`` (``n``: live proxy replicas at the last successful sync) counted on its own admissions, the same
sliding window with its own share of the previous window; with ``fail_closed`` everything is refused.
Unpushed counts are kept and pushed when Redis answers again. **Recovery without a burst:** in the window
during which Redis came back, the replica keeps counting its own admissions as ``n`` times themselves
(``max(G, own / s)``): another replica may not have pushed its outage counts yet, and reading only ``G``
would let this one take the whole quota again. From the next window on, the normal rule applies.

**Memory.** Keys live in two generations of plain dicts (an approximate LRU, O(1), no per-hit
bookkeeping): a miss in the young generation finds the key in the old one and promotes it; when the young
one holds ``max_keys / 2`` keys it becomes the old one and the old one is dropped. So at most ``max_keys``
keys are kept (about 400 bytes each), whatever the number of distinct clients; a dropped key starts again
from Redis's counts at its next sync (its unsynced admissions are still pushed: the sync batch holds them).

**The hot path.** ``admit(key, now)`` is a dict lookup, two comparisons and one increment for a key under
its limit (about 40 bytecodes): the window end, the slope and the cap are precomputed per key by the
(rare) slow path and by the sync, so the test is ``count + slope * now < cap``. A key is "armed" while it is
in the next sync batch; the sync disarms keys that had no admission meanwhile (``end = -inf``), so the next
request of such a key takes the slow path once and queues it again: idle keys cost the sync nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

# Keys longer than this (a header value can be kilobytes) are kept as a digest.
MAX_KEY_CHARS = 128
_DISARMED = -math.inf


class Entry:
    """The state of one key of one rule (see the module docstring for the fields' roles)."""

    __slots__ = (
        "base",  # count at the last push: count - base = unsynced admissions
        "cap",
        "count",  # G + unsynced (only ``count - base`` matters)
        "end",  # the window's end (local clock) while armed, -inf while disarmed
        "g",  # the current window's global count at the last read (-1: not read in this window)
        "gen",  # the LRU generation it lives in
        "key",  # the key as counted (a digest for long keys)
        "mine",  # this replica's pushed admissions in the current window
        "others",  # the other replicas' admissions between two reads here (smoothed)
        "pend",  # unpushed admissions of window ``win - 1``
        "prev",  # the previous window's count (global, or estimated)
        "queued",  # in the limiter's next sync batch
        "share",  # this replica's share of the key's traffic
        "slope",  # admit while count + slope * now < cap
        "wend",  # the window's end (local clock)
        "win",  # the window index of ``count``
    )

    key: str
    win: int
    end: float
    wend: float
    count: int
    base: int
    slope: float
    cap: float
    g: int
    prev: float
    share: float
    others: float
    mine: int
    pend: int
    queued: bool
    gen: int


@dataclass(slots=True)
class Pushed:
    """One key of a sync batch: what was taken to push, in which windows."""

    entry: Entry
    win: int  # window of ``delta``
    delta: int  # unsynced admissions of window ``win``
    pend: int  # unsynced admissions of window ``win - 1``


@dataclass(slots=True)
class Batch:
    """What one limiter pushes in one sync (``Limiter.begin_sync``)."""

    limiter: Limiter
    items: list[Pushed] = field(default_factory=list)


class Limiter:
    """The limiter of one rule. ``now`` is the caller's clock (the proxy's loop time); ``offset`` maps it
    to the Redis clock that aligns windows (``window = floor((now + offset) / W)``), kept current by the
    sync from Redis ``TIME``."""

    def __init__(
        self,
        name: str,
        limit: int,
        window: float,
        *,
        burst: int = 0,
        max_keys: int = 100_000,
        fail_closed: bool = False,
        offset: float = 0.0,
    ) -> None:
        if limit < 1 or window <= 0 or burst < 0 or max_keys < 2:
            raise ValueError("limit >= 1, window > 0, burst >= 0 and max_keys >= 2 are required")
        self.name = name
        self.limit = limit
        self.burst = burst
        self.quota = limit + burst
        self.window = float(window)
        self.max_keys = max_keys
        self.fail_closed = fail_closed
        self.offset = offset
        self._young: dict[str, Entry] = {}
        self._old: dict[str, Entry] = {}
        self._gen = 0
        self._half = max_keys // 2
        self._queue: list[Entry] = []  # armed entries: the next sync batch
        self.replicas = 1  # live replicas at the last successful sync
        self.degraded = False  # the last sync failed: each replica counts alone, on its share
        self._recover_win = -1  # windows up to this one are counted conservatively (Redis came back in it)
        self.denied = 0  # requests refused (metrics)
        self.synced = 0  # successful syncs

    # -- the hot path ----------------------------------------------------------------------------

    def admit(self, key: str, now: float) -> int:
        """0: admit (and count) the request of ``key``; else refuse it: the seconds to wait (Retry-After)."""
        e = self._young.get(key)
        if e is not None and now < e.end:
            if e.count + e.slope * now < e.cap:
                e.count += 1
                return 0
            return self._deny(e, now)
        return self._slow(key, e, now)

    # -- slow paths ------------------------------------------------------------------------------

    def _slow(self, key: str, e: Entry | None, now: float) -> int:
        """A key not in the young generation, a window that ended, or a disarmed key."""
        if e is None:
            if len(key) > MAX_KEY_CHARS:
                digest = "#" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
                e = self._young.get(digest)
                key = digest
            if e is None:
                e = self._old.get(key)
                if e is None:
                    e = self._new(key, now)
                self._young[key] = e
                e.gen = self._gen
                if len(self._young) >= self._half:
                    self._rotate()
        if now >= e.wend:
            self._roll(e, now)
        elif e.end == _DISARMED:
            self._params(e)
        if not e.queued:
            e.queued = True
            self._queue.append(e)
            if len(self._queue) > self.max_keys:
                self._trim_queue()
        e.end = e.wend
        if e.count + e.slope * now < e.cap:
            e.count += 1
            return 0
        return self._deny(e, now)

    def _rotate(self) -> None:
        """The young generation is full: it becomes the old one; the old one is forgotten."""
        self._old = self._young
        self._young = {}
        self._gen += 1

    def _window_of(self, now: float) -> tuple[int, float]:
        """The window index at ``now`` and its end on the caller's clock."""
        w = self.window
        win = math.floor((now + self.offset) / w)
        return win, (win + 1) * w - self.offset

    def _new(self, key: str, now: float) -> Entry:
        e = Entry()
        e.key = key
        e.win, e.wend = self._window_of(now)
        e.end = _DISARMED
        e.count = e.base = e.mine = e.pend = 0
        e.g = -1
        e.prev = 0.0
        e.share = 1.0 / self.replicas
        e.others = 0.0
        e.queued = False
        e.gen = self._gen
        self._params(e)
        return e

    def _roll(self, e: Entry, now: float) -> None:
        """The window of ``e`` ended: estimate its total as the next window's previous count."""
        win, wend = self._window_of(now)
        if win <= e.win:  # (the clock offset moved back a little: same window, new end)
            e.wend = wend
            self._params(e)
            return
        unsynced = e.count - e.base
        if win == e.win + 1:
            # Its total as known here: the global count read (or this replica's own, scaled by its share,
            # if that says more: others may not have pushed yet), plus what is not pushed, scaled.
            share = self._share(e)
            e.prev = max(e.g, 0, e.mine / share) + unsynced / share
            e.pend = unsynced  # pushed to window win - 1 by the next sync
        else:
            e.prev = 0.0  # an idle gap of a whole window: nothing to carry
            e.pend = 0  # (a window two back is never read again: its unpushed count no longer matters)
        e.win, e.wend = win, wend
        e.count = e.base = e.mine = 0
        e.g = -1
        self._params(e)

    def _careful(self, e: Entry) -> bool:
        """Redis is away, or came back during this key's window: count on the fallback share."""
        return self.degraded or e.win <= self._recover_win

    def _share(self, e: Entry) -> float:
        return 1.0 / self.replicas if self._careful(e) else e.share

    def _params(self, e: Entry) -> None:
        """Precompute ``slope`` and ``cap`` so that ``count + slope * t < cap`` is the admission test."""
        if self.degraded and self.fail_closed:
            e.slope, e.cap = 0.0, -math.inf
            return
        share = self._share(e)
        # unsynced < s * (Q - P * (wend - t) / W - G):  count - base + (s P / W) (wend - t) < s (Q - G)
        per_sec = share * e.prev / self.window
        # Careful: this replica's own admissions stand for the others' too (n times its own), or what
        # Redis says when it says more, so nothing is admitted that a replica still holding outage counts
        # would have to pay back. Else: G plus the others' admissions not pushed yet when this replica read
        # G, on average half of what they admit between two of its reads (the syncs are not in step).
        g = max(e.g, 0)
        counted = max(share * g, e.mine) if self._careful(e) else share * (g + 0.5 * e.others)
        e.slope = -per_sec
        e.cap = e.base + share * self.quota - counted - per_sec * e.wend

    def _deny(self, e: Entry, now: float) -> int:
        """Refused: the whole seconds after which this replica would admit the key again (at least 1)."""
        self.denied += 1
        if self.degraded and self.fail_closed:
            return max(1, math.ceil(min(self.window, 60.0)))
        left = e.wend - now
        if e.slope < 0:
            # Within the window the allowance grows by -slope per second.
            wait = math.floor((e.count + e.slope * now - e.cap) / -e.slope) + 1
            if wait < left:
                return max(1, wait)
        # In the next window this window's total T weighs T * (1 - f): room again once f > 1 - Q / T.
        share = self._share(e)
        total = max(e.g, 0, e.mine / share) + (e.count - e.base) / share
        later = left + (self.window * (1.0 - self.quota / total) if total > self.quota else 0.0)
        return max(1, math.floor(later) + 1)

    def window_at(self, now: float) -> int:
        """The index of the window ``now`` falls in (the Redis clock's seconds // the rule's window)."""
        return self._window_of(now)[0]

    # -- sync (driven by services.proxy.limits.sync) --------------------------------------------

    def begin_sync(self) -> Batch:
        """Take every armed key's unsynced admissions for one push (they are restored if it fails)."""
        queue, self._queue = self._queue, []
        batch = Batch(self)
        items = batch.items
        gen = self._gen
        for e in queue:
            e.queued = False
            if e.gen < gen - 1 and e.count == e.base and not e.pend:
                continue  # forgotten by the LRU with nothing to push
            delta = e.count - e.base
            e.base = e.count
            items.append(Pushed(e, e.win, delta, e.pend))
            e.pend = 0
        return batch

    def complete_sync(self, batch: Batch, replies: Iterable[tuple[int, int]], replicas: int, now: float) -> None:
        """The push of ``batch`` succeeded: ``replies`` holds, per item, the global counts of its window
        and of the window before; ``replicas``: the live proxy replicas; ``now``: the caller's clock."""
        self.replicas = max(1, replicas)
        floor = 0.5 / self.replicas
        if self.degraded:
            self.degraded = False
            self._recover_win = self._window_of(now)[0]
        self.synced += 1
        for item, (cur, prev) in zip(batch.items, replies, strict=True):
            e = item.entry
            if e.win == item.win:
                if e.g >= 0 and cur > e.g and item.delta >= 0:
                    ratio = min(1.0, item.delta / (cur - e.g))
                    e.share = max(floor, min(1.0, 0.5 * e.share + 0.5 * ratio))
                    e.others = 0.5 * e.others + 0.5 * max(0, cur - e.g - item.delta)
                elif e.g < 0 and e.share < floor:
                    e.share = floor
                e.mine += item.delta
                e.g = cur
                after = e.count - e.base  # admitted while the script ran
                e.base = cur
                e.count = cur + after
                if e.win <= self._recover_win:
                    e.prev = max(e.prev, float(prev))
                else:
                    e.prev = float(prev)
            elif e.win == item.win + 1:
                # The window ended while the script ran: its count is now the previous one.
                estimate = float(cur) + e.pend / self._share(e)
                e.prev = max(e.prev, estimate) if e.win <= self._recover_win else estimate
            else:
                continue
            self._params(e)
            if e.queued:
                continue  # queued again by a request meanwhile: stays armed
            if e.count != e.base or e.pend:
                e.queued = True
                self._queue.append(e)
            else:
                e.end = _DISARMED  # its next request takes the slow path and queues it again

    def fail_sync(self, batch: Batch) -> None:
        """The push of ``batch`` failed (Redis unreachable or refusing): restore what it took, and count
        alone on this replica's share from now on (or refuse everything with ``fail_closed``)."""
        entering = not self.degraded
        self.degraded = True
        for item in batch.items:
            e = item.entry
            if e.win == item.win:
                e.base -= item.delta
                e.pend += item.pend
            elif e.win == item.win + 1:
                e.pend += item.delta  # (the window before that is never read again)
            if not e.queued:
                e.queued = True
                self._queue.append(e)
        # Armed keys follow the fallback from their next request on; the queue is bounded by the LRU's
        # size (keys it forgot with unpushed counts are dropped first while Redis stays away).
        if len(self._queue) > self.max_keys:
            self._trim_queue()
        if entering:
            for e in self._queue:
                self._params(e)

    def _trim_queue(self) -> None:
        """The next batch holds more keys than the LRU (syncs failing or not running): the keys the LRU
        forgot go, with their unpushed counts (the queue stays within the memory bound)."""
        gen = self._gen
        keep = []
        for e in self._queue:
            if e.gen >= gen - 1:
                keep.append(e)
            else:
                e.queued = False
                e.end = _DISARMED
        self._queue = keep

    def set_offset(self, offset: float) -> None:
        """The caller's clock + ``offset`` = the Redis clock (from the sync). Small moves are ignored, so
        window ends do not jitter with round-trip times."""
        if abs(offset - self.offset) > 0.005:
            self.offset = offset

    # -- inspection ------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Keys kept (both generations; a promoted key is counted once per generation it is in)."""
        return len(self._young) + len(self._old)

    def pending(self) -> int:
        """Keys in the next sync batch."""
        return len(self._queue)
