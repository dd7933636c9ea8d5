"""Several health replicas, one prober: a leader holding the ``health`` lease, standbys waiting.

Why a leader and not consistent hashing over the live replicas
--------------------------------------------------------------
* One replica is enough: probes are cheap raw-socket exchanges, and 1,000 backends every 2 s cost a
  small share of one core (``bench/health.py``). Extra replicas are there for availability, not
  for capacity, so splitting the work buys nothing the deployment needs.
* Correctness is simpler to see. With hashing, every replica must agree on the membership at every
  instant or a backend is probed by two replicas (two writers racing, possibly disagreeing) or by
  none; membership views differ for up to a heartbeat during every join and leave. With a lease
  there is exactly one writer, and the *fencing token* makes that true even for a leader that was
  paused (GC, SIGSTOP, a partition) past its TTL: the store refuses its writes (``Fenced``) and it
  steps down, so a former leader can never overwrite its successor's verdicts.
* Takeover never flaps: the new leader starts from a fresh snapshot, and every backend resumes from
  its *stored* status with zero counters (see ``state.py``) — an ``up`` backend still needs ``fall``
  failed probes to go down, a ``down`` one ``rise`` passed probes to come up.

Timing: the leader renews every ``ttl / 3``; a standby tries to acquire every ``min(ttl / 10, 1 s)``.
A leader killed outright is replaced within ``ttl + poll`` (the lease lapses at most ``ttl`` after
its last renewal). A leader stopped by SIGTERM releases the lease, so the standby takes over at its
next poll. A leader that cannot renew (Redis away) for ``ttl`` minus one renewal period stops
probing on its own, before the lease can have passed to anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from services.health import metrics
from services.health.probes import Prober
from services.health.scheduler import LeaseLost, Scheduler
from shared.aio import cancel_and_wait
from shared.config import HealthCheckConfig
from shared.logs import get_logger
from shared.store import STORE_ERRORS, Lease, Store

log = get_logger("health")

LEASE = "health"


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class HealthService:
    """Wait for the health lease, probe while holding it, step down when it is lost."""

    def __init__(self, store: Store, config: HealthCheckConfig, holder: str, *, prober: Prober | None = None) -> None:
        self.store = store
        self.config = config
        self.holder = holder
        self.prober = prober or Prober(config)
        self.ttl = float(config.lease_ttl_sec)
        self.renew_every = self.ttl / 3
        self.poll_every = min(self.ttl / 10, 1.0)
        self.leading = asyncio.Event()  # set while this replica leads (tests wait on it)

    async def run(self, stop: asyncio.Event) -> None:
        """Alternate between standby and leader until ``stop`` is set; release the lease on the way out."""
        while not stop.is_set():
            lease = await self._acquire(stop)
            if lease is None:
                return
            await self._lead(lease, stop)

    async def _acquire(self, stop: asyncio.Event) -> Lease | None:
        reachable = True
        announced = False
        while not stop.is_set():
            try:
                lease = await self.store.acquire_lease(LEASE, self.holder, self.ttl)
                reachable = True
            except STORE_ERRORS as exc:
                if reachable:
                    log.warning("cannot reach redis for the health lease", error=str(exc) or repr(exc))
                reachable = False
                lease = None
            if lease is not None:
                return lease
            if not announced and reachable:
                log.info("standing by", leader=await self._holder())
                announced = True
            await _sleep_or_stop(stop, self.poll_every)
        return None

    async def _holder(self) -> str | None:
        with contextlib.suppress(*STORE_ERRORS):
            return await self.store.lease_holder(LEASE)
        return None

    async def _lead(self, lease: Lease, stop: asyncio.Event) -> None:
        log.info("leading: probing backends", lease=lease.value)
        scheduler = Scheduler(self.store, self.config, fence=lease, prober=self.prober)
        self.leading.set()
        metrics.LEADER.set(1)
        probing = asyncio.create_task(scheduler.run(), name="health scheduler")
        renewing = asyncio.create_task(self._renew(lease), name="health lease")
        stopping = asyncio.create_task(stop.wait())
        tasks = {probing, renewing, stopping}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(tasks)
            self.leading.clear()
            metrics.LEADER.set(0)
        failure = None if probing.cancelled() else probing.exception()
        crashed = failure if isinstance(failure, Exception) and not isinstance(failure, LeaseLost) else None
        if crashed is not None:
            log.error("scheduler crashed; giving up the lease", error=repr(crashed))
        if stop.is_set() or crashed is not None:
            with contextlib.suppress(*STORE_ERRORS):
                await self.store.release_lease(lease)
            if crashed is not None:
                # Give a standby the first chance to take over before trying again ourselves.
                await _sleep_or_stop(stop, self.poll_every * 2)
        else:
            log.warning("lost the health lease: standing by")

    async def _renew(self, lease: Lease) -> None:
        """Return when the lease is (or may be) lost."""
        renewed_at = time.monotonic()  # when the last successful renewal was *sent*
        while True:
            await asyncio.sleep(self.renew_every)
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self.renew_every):
                    held = await self.store.acquire_lease(LEASE, self.holder, self.ttl, held=lease)
            except (*STORE_ERRORS, TimeoutError) as exc:
                if time.monotonic() - renewed_at >= self.ttl - self.renew_every:
                    log.warning("cannot renew the health lease in time: stepping down", error=str(exc) or repr(exc))
                    return
                continue
            if held is None:
                return
            renewed_at = sent
