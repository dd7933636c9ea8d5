"""Several health replicas split the probing: the backends fall into ``SHARDS`` shards (a stable hash
of the address), each shard a lease with a fencing token, and each live replica holds its share.

* Exactly one prober per backend: a shard is probed only by the holder of its lease, and every health
  write carries that lease's fencing token, so a replica paused (GC, SIGSTOP, a partition) past the
  TTL whose shard moved on is refused by the store (``Fenced``) and drops the shard: it can never
  overwrite its successor's verdicts.
* Spread: with N live health replicas (their heartbeats, ``Store.replicas``) each aims at
  ``ceil(SHARDS / N)`` shards. A replica above its share releases its least preferred shards, but
  only while another live replica is below it (no ping-pong); one below its share takes free shards.
  Each replica prefers shards by a hash of (its id, shard), so replicas rarely contend for the same.
* Work-conserving takeover: a shard whose holder died is free once its lease lapses (at most ``ttl``
  after its last renewal); a replica takes it at its next round if within its share, or, if it
  stayed free for a whole round, beyond it. So a dead replica's backends are probed again within
  ``ttl`` plus two rounds (``poll`` = ``min(ttl / 10, 1 s)``), before its heartbeat has even lapsed.
  A replica stopped by SIGTERM releases its shards: the others take them at their next round.
* No flaps on takeover: the scheduler follows every backend of the store whatever it owns, and a
  shard taken over resumes each backend from its *stored* status with zero counters (``state.py``):
  an ``up`` backend still needs ``fall`` failed probes to go down.

Timing: held leases are renewed every ``ttl / 3``; a replica that cannot renew a shard (Redis away)
for ``ttl`` minus one renewal period stops probing it, before the lease can have passed to anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Mapping

from services.health import metrics
from services.health.probes import Prober
from services.health.scheduler import Scheduler
from shared.aio import cancel_and_wait
from shared.config import HealthCheckConfig, ProbeConfig
from shared.logs import get_logger
from shared.store import STORE_ERRORS, Lease, Store

log = get_logger("health")

SERVICE = "health"

LEASE = "health"  # shard i's lease is "health:i"
SHARDS = 32


def shard_lease(shard: int) -> str:
    return f"{LEASE}:{shard}"


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class HealthService:
    """Hold a share of the shard leases, probe their backends, rebalance as replicas come and go."""

    def __init__(
        self,
        store: Store,
        config: HealthCheckConfig,
        holder: str,
        *,
        prober: Prober | None = None,
        shards: int = SHARDS,
        pools: Mapping[str, ProbeConfig] | None = None,
    ) -> None:
        """``pools``: the configuration's ``pools.NAME.health_check`` (see ``scheduler.py``)."""
        self.store = store
        self.config = config
        self.holder = holder
        self.prober = prober or Prober(config)
        self.shards = shards
        self.ttl = float(config.lease_ttl_sec)
        self.renew_every = self.ttl / 3
        self.poll_every = min(self.ttl / 10, 1.0)
        self.held: dict[int, Lease] = {}
        self._renewed: dict[int, float] = {}  # shard -> when its last successful renewal was sent
        self._free_before: set[int] = set()  # shards seen free at the previous round
        self._lost: set[int] = set()  # shards whose writes were fenced (dropped at the next round)
        self.leading = asyncio.Event()  # set while this replica holds at least one shard (tests wait on it)
        self.scheduler = Scheduler(
            store, config, prober=self.prober, shards=shards, on_lost=self._lost.add, pools=pools
        )
        # Shards in this replica's order of preference (the same order wherever it is computed).
        self._preference = sorted(range(shards), key=lambda s: hashlib.blake2b(f"{holder}/{s}".encode()).digest())

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the store, keep a fair share of the shards, probe them; release them when ``stop`` is set."""
        probing = asyncio.create_task(self.scheduler.run(), name="health scheduler")
        reachable = True
        try:
            while not stop.is_set():
                if probing.done():
                    probing.result()  # a crash of the scheduler: raise it
                try:
                    await self._round()
                    if not reachable:
                        log.info("redis reachable again")
                    reachable = True
                except STORE_ERRORS as exc:
                    if reachable:
                        log.warning("cannot reach redis for the health leases", error=str(exc) or repr(exc))
                    reachable = False
                    self._expire_unrenewed()
                await _sleep_or_stop(stop, self.poll_every)
        finally:
            await cancel_and_wait([probing])
            for lease in self.held.values():
                with contextlib.suppress(*STORE_ERRORS):
                    await self.store.release_lease(lease)
            self._set_held({})

    def _set_held(self, held: dict[int, Lease]) -> None:
        if held.keys() != self.held.keys():
            log.info("probing shards", shards=len(held), of=self.shards)
        self.held = held
        self.scheduler.own(held)
        metrics.SHARDS.set(len(held))
        metrics.LEADER.set(1 if held else 0)
        if held:
            self.leading.set()
        else:
            self.leading.clear()

    def _expire_unrenewed(self) -> None:
        """Stop probing the shards not renewed for ``ttl`` minus one renewal period (they may pass on)."""
        now = time.monotonic()
        keep = {s: lease for s, lease in self.held.items() if now - self._renewed[s] < self.ttl - self.renew_every}
        if len(keep) != len(self.held):
            log.warning("cannot renew health leases in time: stopping their probes", shards=len(self.held) - len(keep))
            self._set_held(keep)

    async def _round(self) -> None:
        held = {s: lease for s, lease in self.held.items() if s not in self._lost}
        self._lost.clear()
        now = time.monotonic()
        due = [s for s in held if now - self._renewed[s] >= self.renew_every]
        renewed = await asyncio.gather(  # (together: one round trip's wait, not one per shard)
            *(self.store.acquire_lease(shard_lease(s), self.holder, self.ttl, held=held[s]) for s in due)
        )
        for shard, lease in zip(due, renewed, strict=True):
            if lease is None or lease != held[shard]:  # taken by another, or lapsed and taken again
                log.warning("lost a health shard", shard=shard)
                del held[shard]
                if lease is not None:  # ours again, under a new fencing token: let it go
                    with contextlib.suppress(*STORE_ERRORS):
                        await self.store.release_lease(lease)
            else:
                self._renewed[shard] = now
        values = await self.store.lease_holders([shard_lease(s) for s in range(self.shards)])
        owners = {s: value.rsplit(":", 1)[0] for s, value in enumerate(values) if value is not None}
        live = {r.id for r in await self.store.replica_infos(service=SERVICE)} | {self.holder}
        share = math.ceil(self.shards / len(live))
        counts = {r: 0 for r in live}
        for owner in owners.values():
            counts[owner] = counts.get(owner, 0) + 1
        if len(held) > share and any(counts.get(r, 0) < share for r in live if r != self.holder):
            for shard in [s for s in reversed(self._preference) if s in held][: len(held) - share]:
                with contextlib.suppress(*STORE_ERRORS):
                    await self.store.release_lease(held.pop(shard))
        free = [s for s in self._preference if s not in owners]
        for shard in free:
            if len(held) >= share and shard not in self._free_before:
                continue  # beyond the share only what nobody took for a whole round
            taken = await self.store.acquire_lease(shard_lease(shard), self.holder, self.ttl)
            if taken is not None:
                held[shard] = taken
                self._renewed[shard] = now
        self._free_before = {s for s in free if s not in held}
        self._set_held(held)
