"""Reconciles the limiters with Redis: every ``rate_limits.sync_sec``, one script per batch of keys.

Keys (``NS`` = ``redis.namespace``): ``NS:rl:RULE:WINDOW:KEY``, a string counter of KEY under rule RULE in
window WINDOW (``floor(redis_time / window_sec)``): the requests admitted by all replicas plus the grants
they hold and have not used yet (given back within one interval, or when the window ends). Each is written
with ``INCRBY`` + ``PEXPIRE`` (two windows and 10 s): every key expires by itself, a replica that dies
leaves nothing behind. The script also answers Redis ``TIME`` (the limiters align their windows on it)
and the number of live proxy replicas (``NS:replicas`` pruned of lapsed ones, counting those whose
``NS:replica:ID`` document says ``"service":"proxy"``): the fallback share while Redis is unreachable.
See ``services.proxy.limits.limiter`` for the algorithm.

The task never blocks a request: the limiters decide from what the last sync brought. When a sync fails
(unreachable, or refusing writes) every limiter is told (``Limiter.fail_sync``: each replica admits its
share, or nothing with ``fail_closed``) and the task retries every interval until it succeeds; the
admissions not pushed meanwhile are pushed then. A batch of more than ``CHUNK`` keys is sent as several
scripts, one after the other; if one fails after others succeeded, the keys of those are pushed again by
the next sync (the over-count is bounded by one interval's admissions of those keys).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.proxy.limits.limiter import Batch, Limiter
from shared.logs import get_logger
from shared.store import STORE_ERRORS, Store

log = get_logger("rate-limits")

# Keys per script call: a script blocks Redis while it runs (about 1 µs per key).
CHUNK = 2000
# Grants cover what the sliding window frees until this many sync intervals from now: a sync that comes
# late (a busy loop, a slow round trip) must not leave the end of a window ungranted.
HORIZON_INTERVALS = 2.0
# Counter keys live this long past their last write (ms), on top of two windows (one as "previous").
EXPIRY_MARGIN_MS = 10_000

# KEYS: replicas (zset). ARGV: key prefix ("NS:"), the service marker ('"service":"proxy"'), the horizon
# (ms: the sync interval), then per key 12 values: the counters of the previous, current and next window;
# the change of the previous one (pend) and of the current one (over); the grant asked for (want); the
# rule's quota; the current window's start and length (ms, Redis clock); the counters' expiry (ms); the
# least count the previous window is taken to have (pmin: after an outage, admissions on the fallback
# share that other replicas may not have pushed yet), and the same for the current window (cmin).
# Per key it applies the changes, then grants from what the sliding window allows by now + horizon:
#   avail = quota - ceil(previous * (1 - f)) - current,  f = elapsed fraction of the window at now + horizon
# grant = min(want, avail) is added to the current counter (so no other replica can take it), and when the
# horizon reaches into the next window, a grant there too. Returns {time_ms, live replicas of the
# service, then per key: previous, current, grant, avail - grant, grant in the next window}.
RATE_LIMIT_SYNC = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local live = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local info = redis.call('GET', ARGV[1] .. 'replica:' .. id)
  if info and string.find(info, ARGV[2], 1, true) then live = live + 1 end
end
local horizon = tonumber(ARGV[3])
local out = {now_ms, live}
local function add(key, n, ttl)
  local v = redis.call('INCRBY', key, n)
  redis.call('PEXPIRE', key, ttl)
  return v
end
local function get(key)
  return tonumber(redis.call('GET', key) or '0')
end
for i = 4, #ARGV, 12 do
  local prev_k, cur_k, next_k = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local pend, over, want = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  local quota, start, w, ttl = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8]), ARGV[i + 9]
  local p = (pend ~= 0) and add(prev_k, pend, ttl) or get(prev_k)
  local pmin = tonumber(ARGV[i + 10])
  if p < pmin then p = pmin end
  local c = (over ~= 0) and add(cur_k, over, ttl) or get(cur_k)
  local cmin = tonumber(ARGV[i + 11])
  local f = (now_ms + horizon - start) / w
  if f > 1 then f = 1 elseif f < 0 then f = 0 end
  local avail = quota - math.ceil(p * (1 - f)) - math.max(c, cmin)
  local grant = 0
  if want > 0 and avail > 0 then
    grant = math.min(want, avail)
    c = add(cur_k, grant, ttl)
  end
  local rest = avail - grant
  if rest < 0 then rest = 0 end
  local ahead = 0
  local fn = (now_ms + horizon - start - w) / w
  if fn > 0 and want > 0 then
    if fn > 1 then fn = 1 end
    local availn = quota - math.ceil(math.max(c, cmin) * (1 - fn)) - get(next_k)
    if availn > 0 then
      ahead = math.min(want, availn)
      add(next_k, ahead, ttl)
    end
  end
  out[#out + 1] = p
  out[#out + 1] = c
  out[#out + 1] = grant
  out[#out + 1] = rest
  out[#out + 1] = ahead
end
return out
"""


def counter_key(namespace: str, rule: str, window: int, key: str) -> str:
    """The Redis counter of ``key`` under ``rule`` in window index ``window``."""
    return f"{namespace}:rl:{rule}:{window}:{key}"


class RateLimitSync:
    """The background reconciliation of a set of limiters (one per rule) with Redis."""

    def __init__(
        self,
        store: Store,
        limiters: Sequence[Limiter],
        *,
        interval: float = 0.1,
        clock: Callable[[], float] | None = None,
        service: str = "proxy",
    ) -> None:
        self.store = store
        self.limiters: list[Limiter] = list(limiters)
        self.interval = interval
        self.clock = clock or asyncio.get_running_loop().time
        self.marker = f'"service":"{service}"'
        self._script = store.redis.register_script(RATE_LIMIT_SYNC)
        self.reachable = True
        self.failed = 0  # syncs that failed (metrics)
        self.synced = 0  # syncs that succeeded
        self.done = asyncio.Event()  # set after every successful sync (tests wait on it)
        self._rng = random.Random()

    def set_limiters(self, limiters: Sequence[Limiter]) -> None:
        """The rules changed: sync these from now on (the caller builds them; a rule kept should keep
        its limiter, whose state goes on)."""
        self.limiters = list(limiters)

    async def sync_once(self) -> bool:
        """Push every limiter's pending counts, read the global ones back; False if Redis did not answer."""
        limiters = self.limiters
        batches = [lim.begin_sync() for lim in limiters]
        namespace = self.store.keys.namespace
        args: list[Any] = []
        index: list[tuple[Batch, int]] = []  # (batch, items) in the order of args
        for lim, batch in zip(limiters, batches, strict=True):
            prefix = f"{namespace}:rl:{lim.name}:"
            window_ms = int(lim.window * 1000)
            ttl = 2 * window_ms + EXPIRY_MARGIN_MS
            for item in batch.items:
                key, win = item.entry.key, item.win
                args += [
                    f"{prefix}{win - 1}:{key}",
                    f"{prefix}{win}:{key}",
                    f"{prefix}{win + 1}:{key}",
                    item.pend,
                    item.over,
                    item.want,
                    lim.quota,
                    win * window_ms,
                    window_ms,
                    ttl,
                    item.pmin,
                    item.cmin,
                ]
            index.append((batch, len(batch.items)))
        keys = [self.store.keys.replicas]
        head: list[Any] = [f"{namespace}:", self.marker, int(HORIZON_INTERVALS * self.interval * 1000)]
        counts: list[int] = []
        live = 1
        redis_ms = 0
        sent = self.clock()
        try:
            for start in range(0, max(len(args), 1), CHUNK * 12):
                reply = await self._script(keys=keys, args=[*head, *args[start : start + CHUNK * 12]])
                redis_ms, live = int(reply[0]), int(reply[1])
                counts += [int(x) for x in reply[2:]]
        except STORE_ERRORS as exc:
            for batch in batches:
                batch.limiter.fail_sync(batch)
            self.failed += 1
            if self.reachable:
                log.warning("cannot sync rate limits; each replica admits its share", error=str(exc) or repr(exc))
                self.reachable = False
            return False
        now = self.clock()
        offset = redis_ms / 1000.0 - (sent + now) / 2
        at = 0
        for batch, n in index:
            lim = batch.limiter
            lim.set_offset(offset)
            replies = [
                (counts[at + j], counts[at + j + 1], counts[at + j + 2], counts[at + j + 3], counts[at + j + 4])
                for j in range(0, 5 * n, 5)
            ]
            at += 5 * n
            lim.complete_sync(batch, replies, live, now)
        if not self.reachable:
            log.info("rate limits synced again")
            self.reachable = True
        self.synced += 1
        self.done.set()
        return True

    async def run(self) -> None:
        """Sync every interval until cancelled."""
        while True:
            started = time.monotonic()
            try:
                if self.limiters:  # (none: every rule was removed by PUT /rate-limits; nothing to sync)
                    await self.sync_once()
            except Exception as exc:  # a bug must not stop the limits from syncing
                log.error("rate-limit sync failed", error=repr(exc))
            # (No backoff while Redis is away: the replicas come back within one interval of each other, so
            # they leave the fallback share in the same window. A refused connection costs next to nothing.)
            pause = self.interval
            # +-25 %: the replicas' syncs drift apart instead of staying in step (after an outage they all
            # retry together), so none is always the first to ask for what the window freed.
            pause *= 0.75 + 0.5 * self._rng.random()
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))
