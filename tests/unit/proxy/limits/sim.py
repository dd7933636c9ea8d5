"""A deterministic simulation of replicas sharing a rule through an in-memory stand-in for the Redis counters
(the same arithmetic as the sync script: INCRBY on the window's counter, read it and the previous one)."""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from dataclasses import dataclass, field

from services.proxy.limits.limiter import Batch, Limiter


@dataclass
class Counters:
    """The per-window counters a sync script would keep in Redis."""

    counts: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    up: bool = True

    def apply(self, batch: Batch) -> list[tuple[int, int]]:
        out = []
        for item in batch.items:
            key = item.entry.key
            self.counts[(key, item.win)] += item.delta
            if item.pend:
                self.counts[(key, item.win - 1)] += item.pend
            out.append((self.counts[(key, item.win)], self.counts[(key, item.win - 1)]))
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
) -> Run:
    rng = random.Random(seed)
    counters = counters or Counters()
    limiters = [Limiter("r", limit, window, burst=burst, max_keys=max_keys) for _ in range(replicas)]
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
    inflight: dict[int, tuple[Batch, list[tuple[int, int]] | None]] = {}
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
            inflight[r] = (batch, None if down else counters.apply(batch))
            heapq.heappush(events, (t + rtt, seq, r, "reply"))
        else:
            batch, replies = inflight.pop(r)
            if replies is None:
                lim.fail_sync(batch)
            else:
                lim.complete_sync(batch, replies, replicas, t)
            heapq.heappush(events, (t - rtt + sync, seq, r, "sync"))
        seq += 1
    return Run(dict(admitted), [dict(p) for p in per])
