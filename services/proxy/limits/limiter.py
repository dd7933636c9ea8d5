"""One rate-limit rule's limiter: decides locally, reconciles with Redis in batches. Pure: no I/O, no clock.

The algorithm
-------------
**Sliding window counter** (a fixed window with interpolation). Time is cut into windows of the rule's
length ``W``, aligned on the Redis clock so every replica counts into the same window. Redis holds one
counter per key and window (``NS:rl:RULE:WINDOW:KEY``, ``INCRBY``, expiring two windows after its last
write). A key's traffic over the last ``W`` seconds is estimated as::

    estimate(t) = P * (1 - f(t)) + C(t)

with ``P`` the count of the previous window, ``C`` the current window's and ``f(t)`` the elapsed fraction
of the current window; a request is admitted while ``estimate < Q`` (``Q`` = rate + burst).
Why this counter: a fixed window admits up to ``2Q`` within ``W`` seconds across a boundary; an exact
sliding log keeps a timestamp per request (memory grows with the rate); a token bucket's state is not
additive, so replicas could not merge it with one ``INCRBY``. Window counters are additive, expire by
themselves, and the interpolation's only assumption (the previous window's requests were evenly spread)
errs by at most ``P * f`` shifted within one window; under a steady overload every window's count
converges to exactly ``Q``.

**Across replicas: grants, not guesses.** A replica cannot see what the others admitted since their last
push, so replicas that each take "what is left" from their own (stale) view of Redis take the same slack
several times (measured: 10-20 % over per window once syncs come late). Instead, every sync interval
(``rate_limits.sync_sec``, 100 ms) one script per batch, for each key this replica saw:

1. adds this replica's admissions beyond what the counter already holds for it (``INCRBY``; negative:
   grants it gives back), and the same for the previous window once that ended;
2. computes what the sliding window allows by the next sync, ``avail = Q - ceil(P * (1 - f(now + H))) - C``
   (``H``: two sync intervals, so a late sync does not leave the window's last capacity ungranted);
3. grants ``min(want, avail)`` and adds it to the counter at once, so no other replica can take it (and, when
   the next sync falls into the next window, grants there too, so a busy key never waits at a boundary).

The replica then admits locally, with no round trip, while its admissions in the window stay below what it
holds (grants plus admissions already pushed) plus ``1/n`` of what was left after its grant (``n`` live
replicas): that last part keeps keys far from their limit from waiting for a sync, and is 0 near it.
``want`` is twice what the key asked of this replica during the last interval (nothing when it asked at
most once), so a replica holds about two intervals of its own demand and gives the rest back: grants
follow each replica's traffic. The ``1/n`` share of the leftover is rounded up or down at random, in
proportion, so small quotas are not always rounded away.

Error bound. Grants are atomic, so the counter never exceeds ``Q - P * (1 - f)`` through grants; a window's
count can exceed ``Q`` only by (a) the ``1/n`` shares of the leftover taken from views up to one interval
old (zero once the key is at its limit, where nothing is left), and (b) a key's first requests on a replica
before its first sync (below), at most ``Q / n`` per replica. Early use of a grant (it covers capacity
freed by ``now + H``) shifts at most ``Q * H / W`` admissions earlier within the sliding window.
Unused grants cost the others: at most about two intervals of one replica's demand until given back. With
3 replicas each offered 3x the limit every window admits ``Q`` (simulated: 1.000 in every window, also
with syncs up to 100 % late and round trips up to 50 ms; the integration test checks 0.95-1.05 against a
real Redis). Under the limit the grants held cost little: 3 replicas sharing a key at half its limit refuse
1.2 % of its Poisson arrivals at 100/s (one replica alone: 0.4 %, the sliding window's own), 8 % at 10/s
(alone: 0.2 %): small quotas shared by several replicas are the weak spot.

**Before a key's first sync** (a key new to this replica, or a window with no grant yet), and **while
Redis is down**, a replica admits on its fallback share alone: its own admissions under ``1/n`` of what the
sliding window allows (``count + P/n * (1 - f) < Q/n``, ``P`` the previous window's count as last known;
``n`` = live proxy replicas at the last successful sync). With ``fail_closed`` a degraded limiter refuses
everything. Unpushed admissions are kept and pushed when Redis answers again. **Recovery without a burst:**
until the window ``RECOVERY_SEC`` (2 s) after Redis came back has ended, the replica keeps counting on its
fallback share: the other replicas may come back later, and until they pushed their outage admissions
Redis's counts are too low. It asks for grants all the same (they are not used, but reserve its own
admissions where a replica already granted again sees them; and the last such window's grants ahead
start the next one granted), computed as if every replica had admitted as many as it did; the next
window's grants take the previous count as at least that until Redis holds more. A drop in the
number of live replicas (heartbeats not back yet) is believed only after 20 syncs in a row.

**Memory.** Keys live in two generations of plain dicts (an approximate LRU, O(1), no per-hit
bookkeeping): a miss in the young generation finds the key in the old one and promotes it; when the young
one holds ``max_keys / 2`` keys it becomes the old one and the old one is dropped. So at most ``max_keys``
keys are kept (about 400 bytes each with the key; 1,000,000 distinct keys through a limiter of 20,000
grow the RSS by 8 MB), whatever the number of distinct clients; a dropped key starts again on its
fallback share (its unpushed admissions are still pushed: the sync batch holds them).

**The hot path.** ``admit(key, now)`` is a dict lookup, two comparisons and one increment for a key under
its limit (34 bytecodes): the window end and the admission test's slope and cap are precomputed per key by
the (rare) slow path and by the sync, so the test is ``count + slope * now < cap``. A key is "armed" while it
is in the next sync batch; the sync disarms keys that had no request meanwhile (``end = -inf``), so the
next request of such a key takes the slow path once and queues it again: idle keys cost the sync nothing.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from services.proxy.http import fast

# After an outage, keys stay on the fallback share (and ask for no grant) until the window this much later
# has ended: the other replicas retry up to a second apart, and their outage admissions must be in Redis
# before its counts are believed.
RECOVERY_SEC = 2.0
# Syncs in a row that must count fewer live replicas before the fallback share grows (2 s at 100 ms).
FEWER_SYNCS = 20
# Keys longer than this (a header value can be kilobytes) are kept as a digest.
MAX_KEY_CHARS = 128
_DISARMED = -math.inf


class Entry:
    """The state of one key of one rule (see the module docstring). With the C extension built, entries are
    ``_fast.Entry`` (:data:`_ENTRY`: the same attributes, the hot path's four held as C numbers) and
    :meth:`Limiter.admit` is ``_fast.admit``, its C twin; this class and ``Limiter.admit_py`` are the
    reference and the fallback (tests/unit/proxy/limits holds them to the same answers)."""

    __slots__ = (
        "asked",  # requests refused since the last sync, plus admissions of windows ended since then
        "cap",  # admit while count + slope * now < cap
        "claimed",  # this replica's part of the window's counter in Redis: grants and admissions pushed
        "count",  # this replica's admissions in window ``win``
        "end",  # the window's end (local clock) while armed, -inf while disarmed
        "extra",  # admissions allowed beyond the grant: a share of what was left at the last sync
        "g",  # the window's global count at the last sync (-1: no sync in this window yet)
        "gen",  # the LRU generation it lives in
        "key",  # the key as counted (a digest for long keys)
        "mark",  # ``count`` at the last sync
        "next_claim",  # granted ahead for window ``win + 1``
        "pend",  # for window ``win - 1``: admissions minus what the counter holds for them (pushed next)
        "pmin",  # the previous window's count is at least this (counted on the fallback share)
        "prev",  # the previous window's count (global, or estimated)
        "queued",  # in the limiter's next sync batch
        "slope",
        "want",  # the grant asked for at the next sync
        "wend",  # the window's end (local clock)
        "win",  # the window index of ``count``
    )

    asked: int
    cap: float
    claimed: int
    count: int
    end: float
    extra: int
    g: int
    gen: int
    key: str
    mark: int
    next_claim: int
    pend: int
    pmin: int
    prev: float
    queued: bool
    slope: float
    want: int
    wend: float
    win: int


# What _new makes: the C entry when the extension is built (typed as Entry: the same attributes).
_ENTRY: type[Entry] = fast.EXTENSION.Entry if fast.EXTENSION is not None else Entry
_ADMIT: Callable[[Limiter, str, float], int] | None = fast.EXTENSION.admit if fast.EXTENSION is not None else None


@dataclass(slots=True)
class Pushed:
    """One key of a sync batch."""

    entry: Entry
    win: int  # the window of ``over``
    over: int  # added to the counter: admissions beyond what it holds for this replica, or grants given back
    pend: int  # the same for window ``win - 1`` (negative: grants not used, given back)
    want: int  # the grant asked for
    pmin: int  # the previous window's count is at least this, whatever Redis holds yet
    cmin: int  # the same for the current window


@dataclass(slots=True)
class Batch:
    """What one limiter pushes in one sync (``Limiter.begin_sync``)."""

    limiter: Limiter
    items: list[Pushed] = field(default_factory=list)


class Limiter:
    """The limiter of one rule. ``now`` is the caller's clock (the proxy's loop time); ``offset`` maps it
    to the Redis clock that aligns windows (``window = floor((now + offset) / W)``): start with
    ``time.time() - loop.time()``, the sync keeps it on Redis ``TIME``."""

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
        rng: random.Random | None = None,
        compiled: bool = True,
    ) -> None:
        """``compiled`` False: the Python reference (Entry, admit_py) even where the C twin is built."""
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
        self._rng = rng or random.Random()
        # The hot path: 0 (admitted) or the seconds to wait; ``_fast.admit`` bound to this limiter when
        # built, else admit_py (an attribute: one call from the proxy either way).
        self.admit: Callable[[str, float], int] = self.admit_py
        self._entry = Entry
        if compiled and _ADMIT is not None:
            self.admit, self._entry = partial(_ADMIT, self), _ENTRY
        self._young: dict[str, Entry] = {}
        self._old: dict[str, Entry] = {}
        self._gen = 0
        self._half = max_keys // 2
        self._queue: list[Entry] = []  # armed entries: the next sync batch
        self.replicas = 1  # live replicas at the last successful sync
        self._fewer = 0  # syncs in a row that counted fewer live replicas
        self.degraded = False  # the last sync failed: each replica counts alone, on its share
        self._recover_win = -1  # windows up to this one are counted conservatively (Redis came back in it)
        self.denied = 0  # requests refused (metrics)
        self.synced = 0  # successful syncs

    # -- the hot path ----------------------------------------------------------------------------

    def admit_py(self, key: str, now: float) -> int:
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
        e = self._entry()
        e.key = key
        e.win, e.wend = self._window_of(now)
        e.end = _DISARMED
        e.count = e.mark = e.asked = e.claimed = e.next_claim = e.pend = e.extra = e.pmin = 0
        e.g = -1
        e.prev = 0.0
        e.want = 1
        e.queued = False
        e.gen = self._gen
        self._params(e)
        return e

    def _roll(self, e: Entry, now: float) -> None:
        """The window of ``e`` ended: its admissions are reconciled by the next sync; the next window
        starts from what was granted ahead for it (else from the fallback share)."""
        win, wend = self._window_of(now)
        if win <= e.win:  # (the clock offset moved back a little: same window, new end)
            e.wend = wend
            self._params(e)
            return
        e.asked += e.count - e.mark
        if win == e.win + 1:
            e.pend = e.count - e.claimed  # (negative: grants not used, given back)
            # The window's total as known here: the last global count, plus what was admitted beyond it;
            # on the fallback share (or before any sync), n times this replica's own admissions.
            alike = float(e.count * self.replicas)
            e.pmin = 0
            if e.g < 0:
                e.prev = alike
            else:
                e.prev = float(e.g + max(0, e.count - e.claimed))
                if self._careful(e):
                    # The others' last admissions on their share reach Redis with their next sync: until
                    # then the grants assume they admitted as many as this replica.
                    e.prev = max(e.prev, alike)
                    e.pmin = e.count * self.replicas
            e.claimed = e.next_claim
        else:
            e.pend = e.pmin = 0  # (a window two back is never read again)
            e.prev = 0.0
            e.claimed = 0
        e.next_claim = e.extra = 0
        e.win, e.wend = win, wend
        e.count = e.mark = 0
        e.g = -1
        self._params(e)

    def _careful(self, e: Entry) -> bool:
        """Redis is away, or came back during this key's window: count on the fallback share."""
        return self.degraded or e.win <= self._recover_win

    def _params(self, e: Entry) -> None:
        """Precompute ``slope`` and ``cap`` so that ``count + slope * t < cap`` is the admission test."""
        if self.degraded and self.fail_closed:
            e.slope, e.cap = 0.0, -math.inf
            return
        if not self._careful(e) and (e.claimed > 0 or e.g >= 0):
            # Granted: what Redis granted (counted there, so no other replica can take it), plus a share of
            # what was left after the grant.
            e.slope, e.cap = 0.0, float(e.claimed + e.extra)
            return
        # The fallback share: this replica alone, on 1/n of what the sliding window allows:
        # count + (P / n) * (wend - t) / W < Q / n.
        share = 1.0 / self.replicas
        per_sec = share * e.prev / self.window
        e.slope = -per_sec
        e.cap = share * self.quota - per_sec * e.wend

    def _deny(self, e: Entry, now: float) -> int:
        """Refused: the whole seconds after which the key's window estimate is below the quota again
        (at least 1)."""
        self.denied += 1
        e.asked += 1
        if self.degraded and self.fail_closed:
            return max(1, math.ceil(min(self.window, 60.0)))
        left = e.wend - now
        quota, window = self.quota, self.window
        if self._careful(e) or (e.g < 0 and e.claimed <= 0):
            if not self._careful(e) and self.replicas > 1:
                return 1  # no global view of this window yet: the next sync brings it
            total = float(e.count * self.replicas)  # (each replica admits alike on its share)
        else:
            total = float(e.g + max(0, e.count - e.claimed))  # the window's count in Redis, and since
        if total < quota:
            if e.prev <= 0:
                return 1  # the window has room: this replica's grant is used up until the next sync
            # Within the window: P * (wend - t) / W + total < Q once t > wend - W * (Q - total) / P.
            wait = left - window * (quota - total) / e.prev
            return max(1, math.floor(wait) + 1)
        # In the next window this one weighs total * (1 - f): room again once f > 1 - Q / total.
        return max(1, math.floor(left + window * (1.0 - quota / total)) + 1)

    def key_window(self, key: str) -> int | None:
        """The window ``key`` is counting in here (None: not kept). Its admissions are counted in that
        window's counter, even within a few ms of a boundary the Redis clock puts elsewhere."""
        e = self._young.get(key) or self._old.get(key)
        return e.win if e is not None else None

    def window_at(self, now: float) -> int:
        """The index of the window ``now`` falls in (the Redis clock's seconds // the rule's window)."""
        return self._window_of(now)[0]

    # -- sync (driven by services.proxy.limits.sync) --------------------------------------------

    def begin_sync(self) -> Batch:
        """Take every armed key's admissions to push and the grant to ask for (restored if it fails)."""
        queue, self._queue = self._queue, []
        batch = Batch(self)
        items = batch.items
        gen = self._gen
        for e in queue:
            e.queued = False
            over = e.count - e.claimed
            if e.gen < gen - 1 and over <= 0 and not e.pend:
                continue  # forgotten by the LRU with nothing to push
            # Hold about twice what the key asked of this replica since the last sync (halving when it calms
            # down): enough until the next sync, little left unused for the others. A key asked once or not
            # at all holds nothing: its next requests come out of the share of what is left (``extra``), as
            # grants held by quiet replicas would be missing for busy ones.
            asked = e.asked + e.count - e.mark
            e.asked, e.mark = 0, e.count
            e.want = target = max(2 * asked, e.want // 2) if asked > 1 else 0
            # On the fallback share (after an outage) grants are asked for all the same but not used: they
            # make this replica's admissions visible to replicas already granted again (which may happen a
            # window earlier); this window's count is taken as n times this replica's own there.
            cmin = 0
            if self._careful(e):
                cmin = e.count * self.replicas
                target = min(target, -(-self.quota // self.replicas))  # (its share at most)
            if self.degraded:
                items.append(Pushed(e, e.win, over if over > 0 else 0, e.pend, 0, e.pmin, cmin))
            elif over >= 0:
                items.append(Pushed(e, e.win, over, e.pend, target, e.pmin, cmin))
            else:
                # Granted and not used: keep the target, give the rest back now (not usable meanwhile).
                give = -over - target if -over > target else 0
                if not self._careful(e):
                    e.cap -= give
                items.append(Pushed(e, e.win, -give, e.pend, target - (-over - give), e.pmin, cmin))
            e.pend = 0
        return batch

    def complete_sync(
        self, batch: Batch, replies: Iterable[tuple[int, int, int, int, int]], replicas: int, now: float
    ) -> None:
        """The push of ``batch`` succeeded. ``replies`` holds, per item: the previous window's count, the
        current window's count, the grant in it, what was left after the grant, the grant in the next
        window; ``replicas``: the live proxy replicas; ``now``: the caller's clock."""
        if self.degraded:
            self.degraded = False
            self._recover_win = self._window_of(now + RECOVERY_SEC)[0]
        # More replicas count at once; fewer only once Redis said so for FEWER_SYNCS syncs in a row: after
        # an outage (or a restarted Redis, which has no heartbeats) the replicas come back one by one, and
        # counting fewer meanwhile would give each a larger fallback share.
        n = max(1, replicas)
        if n >= self.replicas or self._fewer >= FEWER_SYNCS:
            self.replicas, self._fewer = n, 0
        else:
            self._fewer += 1
        self.synced += 1
        for item, (prev, cur, grant, rest, grant_next) in zip(batch.items, replies, strict=True):
            e = item.entry
            if e.win == item.win:
                e.claimed += item.over + grant
                e.next_claim += grant_next
                e.g = cur
                e.prev = max(e.prev, float(prev)) if self._careful(e) else float(prev)
                # rest / n, rounded up or down at random (in proportion): with small quotas always
                # rounding down would refuse the second request of an interval with room left in the window.
                e.extra = rest // n + (self._rng.random() * n < rest % n) if rest > 0 else 0
            elif e.win == item.win + 1:
                # The window ended while the script ran: what it added there is reconciled with the rest.
                e.pend -= item.over + grant
                e.claimed += grant_next
                e.prev = float(max(cur + e.pend, 0))
            else:
                continue
            self._params(e)
            if e.queued:
                continue  # queued again by a request meanwhile: stays armed
            if e.count != e.mark or e.pend or e.count > e.claimed:
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
                e.pend += item.pend
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
                keep.append(e)  # (a kept key's unpushed admissions are recomputed from its state)
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
