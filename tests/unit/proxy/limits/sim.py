"""A deterministic simulation of replicas sharing a rule through an in-memory stand-in for the Redis counters
(the same arithmetic as the sync script: INCRBY on the window's counter, read it and the previous one)."""

from __future__ import annotations

import heapq
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from services.proxy.limits.limiter import Batch, Limiter


@dataclass
class Counters:
    """The per-window counters in Redis and what the sync script does with them (services.proxy.limits.sync:
    RATE_LIMIT_SYNC), written again in Python: push, then grant from what the sliding window allows."""

    horizon: float = 0.1
    counts: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))

    def apply(self, batch: Batch, now: float) -> list[tuple[int, int, int, int, int]]:
        lim = batch.limiter
        quota, w = lim.quota, lim.window
        out = []
        for item in batch.items:
            key, win = item.entry.key, item.win
            counts = self.counts
            counts[(key, win - 1)] += item.pend
            counts[(key, win)] += item.over
            p, c = max(0, item.pmin, counts[(key, win - 1)]), counts[(key, win)]
            f = min(1.0, max(0.0, (now + self.horizon - win * w) / w))
            avail = quota - math.ceil(p * (1 - f)) - max(c, item.cmin)
            grant = min(item.want, avail) if item.want > 0 and avail > 0 else 0
            counts[(key, win)] = c = c + grant
            rest = max(0, avail - grant)
            gnext = 0
            fn = (now + self.horizon - (win + 1) * w) / w
            if fn > 0 and item.want > 0:
                n = counts[(key, win + 1)]
                availn = quota - math.ceil(max(c, item.cmin) * (1 - min(1.0, fn))) - n
                if availn > 0:
                    gnext = min(item.want, availn)
                    counts[(key, win + 1)] += gnext
            out.append((p, c, grant, rest, gnext))
        return out


@dataclass
class Run:
    admitted: dict[int, int]  # window index -> admitted by all replicas
    per_replica: list[dict[int, int]]


def simulate(
    replicas: int,
    limit: int,
    window: float,
    offered: list[float],  # requests per second offered to each replica
    seconds: float,
    *,
    sync: float = 0.1,
    rtt: float = 0.001,
    key: str = "k",
    seed: int = 1,
    counters: Counters | None = None,
    outage: tuple[float, float] | None = None,  # (start, end): the counters are unreachable meanwhile
    burst: int = 0,
    max_keys: int = 1000,
    jitter: float = 0.0,  # syncs late by up to this share of the interval
    slow_rtt: float = 0.0,  # round trips up to this many seconds longer
) -> Run:
    rng = random.Random(seed)
    counters = counters or Counters(horizon=2 * sync)
    limiters = [
        Limiter("r", limit, window, burst=burst, max_keys=max_keys, rng=random.Random(seed + r))
        for r in range(replicas)
    ]
    admitted: dict[int, int] = defaultdict(int)
    per: list[dict[int, int]] = [defaultdict(int) for _ in range(replicas)]
    events: list[tuple[float, int, int, str]] = []  # (time, seq, replica, kind)
    seq = 0
    for r in range(replicas):
        if offered[r] > 0:
            events.append((rng.random() / offered[r], seq, r, "req"))
            seq += 1
        events.append((sync * (r + 1) / replicas, seq, r, "sync"))
        seq += 1
    heapq.heapify(events)
    inflight: dict[int, tuple[Batch, list[tuple[int, int, int, int, int]] | None]] = {}
    while events:
        t, _, r, kind = heapq.heappop(events)
        if t >= seconds:
            break
        lim = limiters[r]
        if kind == "req":
            if lim.admit(key, t) == 0:
                admitted[int(t // window)] += 1
                per[r][int(t // window)] += 1
            gap = rng.expovariate(offered[r])
            heapq.heappush(events, (t + gap, seq, r, "req"))
        elif kind == "sync":
            batch = lim.begin_sync()
            down = outage is not None and outage[0] <= t < outage[1]
            inflight[r] = (batch, None if down else counters.apply(batch, t))
            heapq.heappush(events, (t + rtt + rng.random() * slow_rtt, seq, r, "reply"))
        else:
            batch, replies = inflight.pop(r)
            if replies is None:
                lim.fail_sync(batch)
            else:
                lim.complete_sync(batch, replies, replicas, t)
            heapq.heappush(events, (t + sync * (1 + rng.random() * jitter), seq, r, "sync"))
        seq += 1
    return Run(dict(admitted), [dict(p) for p in per])
