"""Probe every backend in the store on its own timer and write health transitions back.

One :class:`Scheduler` runs while its replica leads (see ``service.py``). It follows ``Store.watch()``
(a snapshot, then events): a backend that appears gets a probe task, one that disappears loses it.
Each task sleeps until its next due time (``state.Schedule``), takes a slot of the probe semaphore
(``concurrency``), probes with the per-probe timeout, and feeds the verdict to the backend's
``ProbeState``. A hung backend therefore holds at most one slot for ``timeout_sec`` and delays no one
else's timer.

Pools: each backend is probed with its pool's health check (``PoolProbe``): the pool's stored
``PoolSetting.health_check``, else the configuration's ``pools.NAME.health_check``, else the top-level
``health_check``. The stored pools are followed with the backends (``pool_set`` / ``pool_removed``
events): when a pool's check changes, its backends' probe tasks are replaced (each resumes from its
stored status, as on a takeover), the other pools' are untouched. The probe semaphore
(``concurrency``) is shared by all pools.

Writes: only when the decided status differs from what the store holds (``Target.written``, kept
in step with the watched snapshot and health events). A passive (outlier) ejection is never cleared
here: it ends at its own time, whatever the probes say. A failed write (Redis away) is retried after the next probe; a
``Fenced`` write means another replica leads now and stops the whole scheduler at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Mapping

from services.health import metrics
from services.health.probes import Prober, ProbeTarget
from services.health.state import ProbeState, Schedule, Verdict
from shared.aio import cancel_and_wait
from shared.config import DEFAULT_POOL, HealthCheckConfig, ProbeConfig
from shared.logs import get_logger
from shared.models import Event, HealthStatus, PoolSetting, Snapshot
from shared.store import STORE_ERRORS, BackendNotFound, Fenced, Lease, Store

log = get_logger("health")

# Store writes in flight at once: transitions come in bursts (1,000 new backends at start-up) and
# the Redis client opens one connection per concurrent command.
WRITE_CONCURRENCY = 16


class LeaseLost(Exception):
    """A write was fenced: another replica holds the health lease."""


class PoolProbe:
    """How the backends of one pool are probed: its health check, prober and schedule."""

    __slots__ = ("config", "prober", "schedule")

    def __init__(self, config: ProbeConfig, prober: Prober | None = None) -> None:
        self.config = config
        self.prober = prober or Prober(config)
        self.schedule = Schedule(float(config.interval_sec), float(config.jitter))


class Target:
    """One probed backend: its probe recipe, decision state and bookkeeping."""

    __slots__ = (
        "address",
        "first_verdict_at",
        "last_start",
        "max_gap",
        "metrics",
        "pool",
        "probe",
        "probes",
        "reason",
        "recipe",
        "state",
        "task",
        "written",
    )

    def __init__(
        self,
        probe: ProbeTarget,
        state: ProbeState,
        written: HealthStatus,
        pool: str,
        recipe: PoolProbe,
    ) -> None:
        self.address = probe.address
        self.probe = probe
        self.pool = pool
        self.recipe = recipe
        self.state = state
        self.written: HealthStatus = written  # the status the store holds, as far as we know
        self.reason = ""
        self.task: asyncio.Task[None] | None = None
        self.probes = 0
        self.first_verdict_at = 0.0  # monotonic
        self.last_start = 0.0  # monotonic
        self.max_gap = 0.0  # longest time between two probe starts
        self.metrics = metrics.BackendMetrics(probe.address)


def shard_of(address: str, shards: int) -> int:
    """The shard of a backend: the same in every replica and process (not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "big") % shards


class Scheduler:
    """Probes the backends of the store, all of them (``fence``: the one lease writes go under), or,
    with ``shards``, only those of the shards it owns (:meth:`own`; each shard's writes go under that
    shard's lease). It follows every backend either way, so owning a shard more starts its probes at
    once, each backend from its stored status."""

    def __init__(
        self,
        store: Store,
        config: HealthCheckConfig,
        *,
        fence: Lease | None = None,
        prober: Prober | None = None,
        rng: random.Random | None = None,
        shards: int = 0,
        on_lost: Callable[[int], None] | None = None,
        pools: Mapping[str, ProbeConfig] | None = None,
    ) -> None:
        """``config``: the top-level health check (the default pool's, every pool's fallback) and the
        service's settings; ``pools``: the configuration's ``pools.NAME.health_check``; ``prober``: the
        default pool's (tests)."""
        self.store = store
        self.config = config
        self.config_pools = dict(pools or {})
        self.stored_pools: dict[str, PoolSetting] = {}  # the store's pool records (health_check None: config's)
        self.recipes: dict[str, PoolProbe] = {}  # pool -> the recipe its backends are probed with now
        self.pool_of: dict[str, str] = {}  # every backend: its pool
        self.fence = fence
        self.shards = shards
        self.owned: dict[int, Lease] = {}  # with shards: the shards probed here, and their leases
        self.on_lost = on_lost  # a shard's write was fenced (another replica holds it now)
        self.known: dict[str, HealthStatus] = {}  # every backend: its stored status
        self.prober = prober or Prober(config)
        self.rng = rng or random.Random()
        self.targets: dict[str, Target] = {}
        self.synced = asyncio.Event()  # set once the first snapshot is applied
        self._probe_slots = asyncio.Semaphore(config.concurrency)
        self._write_slots = asyncio.Semaphore(WRITE_CONCURRENCY)
        self._lost = asyncio.Event()
        self._redis_down = False

    # -- following the store ----------------------------------------------------------------

    async def run(self) -> None:
        """Follow the store and probe until cancelled; raise LeaseLost when a write is fenced."""
        follow = asyncio.create_task(self._follow())
        lost = asyncio.create_task(self._lost.wait())
        try:
            await asyncio.wait({follow, lost}, return_when=asyncio.FIRST_COMPLETED)
            if self._lost.is_set():
                raise LeaseLost("health lease lost")
            follow.result()  # re-raise a crash of the follower
        finally:
            await cancel_and_wait((follow, lost))
            await self.close()

    async def _follow(self) -> None:
        # Cancelling this task closes the watch (its generator's finally closes the subscription).
        async for item in self.store.watch():
            self.apply(item)

    def _owns(self, address: str) -> bool:
        return not self.shards or shard_of(address, self.shards) in self.owned

    def own(self, owned: dict[int, Lease]) -> None:
        """With shards: probe the backends of these shards (writes fenced by their leases), stop
        probing the others."""
        self.owned = dict(owned)
        for address in [a for a in self.targets if not self._owns(a)]:
            self._remove(address)
        for address, status in self.known.items():
            if address not in self.targets and self._owns(address):
                self._add(address, status)

    def _fence_for(self, address: str) -> Lease | None:
        return self.owned.get(shard_of(address, self.shards)) if self.shards else self.fence

    # -- pools -------------------------------------------------------------------------------

    def probe_config(self, pool: str) -> ProbeConfig:
        """The health check of ``pool``: stored, else the configuration's section, else the top-level one."""
        stored = self.stored_pools.get(pool)
        if stored is not None and stored.health_check is not None:
            return stored.health_check
        return self.config_pools.get(pool, self.config)

    def _recipe(self, pool: str) -> PoolProbe:
        config = self.probe_config(pool)
        recipe = self.recipes.get(pool)
        if recipe is None or recipe.config != config:
            recipe = PoolProbe(config, self.prober if config is self.config else None)
            self.recipes[pool] = recipe
        return recipe

    def _refresh_pools(self) -> None:
        """Re-make the probe tasks of the pools whose health check changed (from their stored status)."""
        changed = {pool for pool, recipe in self.recipes.items() if recipe.config != self.probe_config(pool)}
        if not changed:
            return
        for pool in sorted(changed):
            log.info("pool health check changed", pool=pool, type=self.probe_config(pool).type)
        for address in [a for a, t in self.targets.items() if t.pool in changed]:
            self._remove(address)
            self._add(address, self.known.get(address, "unknown"))

    def apply(self, item: Snapshot | Event) -> None:
        """Bring the probed set in line with a snapshot or an event from the store."""
        if isinstance(item, Snapshot):
            self.known = {a: v.health.status for a, v in item.backends.items()}
            self.pool_of = {a: v.backend.pool for a, v in item.backends.items()}
            self.stored_pools = dict(item.pools)
            for address in [a for a, t in self.targets.items() if t.pool != self.pool_of.get(a, t.pool)]:
                self._remove(address)  # moved to another pool meanwhile: re-added below with its check
            self._refresh_pools()
            for address, view in item.backends.items():
                target = self.targets.get(address)
                if target is None:
                    if self._owns(address):
                        self._add(address, view.health.status)
                else:
                    target.written = view.health.status
            for address in [a for a in self.targets if a not in item.backends]:
                self._remove(address)
            if not self.synced.is_set():
                log.info("following", backends=len(self.known), probed_here=len(self.targets), type=self.config.type)
            self.synced.set()
            return
        if item.kind == "pool_set" and item.pool is not None:
            self.stored_pools[item.pool.name] = item.pool
            self._refresh_pools()
            return
        if item.kind == "pool_removed" and item.name is not None:
            self.stored_pools.pop(item.name, None)
            self._refresh_pools()
            return
        address = item.address or (item.backend.address if item.backend is not None else "")
        if not address:
            return
        target = self.targets.get(address)
        known = self.known.get(address)
        if item.kind in ("backend_added", "backend_updated"):
            if known is None:
                self.known[address] = "unknown"
            if item.backend is not None:
                self.pool_of[address] = item.backend.pool
                if target is not None and target.pool != item.backend.pool:  # moved: probe with its new pool's check
                    self._remove(address)
                    target = None
            if target is None and self._owns(address):
                self._add(address, self.known[address])
        elif item.kind == "backend_removed":
            self.known.pop(address, None)
            self.pool_of.pop(address, None)
            self._remove(address)
        elif item.kind == "health" and item.health is not None:
            if known is not None:
                self.known[address] = item.health.status
            if target is not None:
                target.written = item.health.status

    def _add(self, address: str, status: HealthStatus) -> None:
        pool = self.pool_of.get(address, DEFAULT_POOL)
        recipe = self._recipe(pool)
        try:
            probe = recipe.prober.target(address)
        except ValueError as exc:
            log.warning("cannot probe backend", backend=address, error=str(exc))
            return
        # A takeover resumes from the stored status (see state.py): no backend flips on a new leader.
        config = recipe.config
        target = Target(probe, ProbeState(config.rise, config.fall, status), status, pool, recipe)
        target.task = asyncio.create_task(self._probe_loop(target), name=f"probe {address}")
        self.targets[address] = target
        metrics.BACKENDS.set(len(self.targets))

    def _remove(self, address: str) -> None:
        target = self.targets.pop(address, None)
        if target is None:
            return
        metrics.BACKENDS.set(len(self.targets))
        if target.task is None or target.task.done():
            self._forget(address)
            return
        target.task.cancel()
        # Forget its series once the task has ended (a probe in flight would otherwise re-create them).
        target.task.add_done_callback(lambda _: self._forget(address))

    def _forget(self, address: str) -> None:
        if address not in self.targets:  # not re-added meanwhile
            metrics.forget_backend(address)

    async def close(self) -> None:
        """Stop every probe task (and forget their metrics)."""
        tasks = [t.task for t in self.targets.values() if t.task is not None]
        for address in list(self.targets):
            self._remove(address)
        await cancel_and_wait(tasks)

    # -- probing -----------------------------------------------------------------------------

    async def _probe_loop(self, target: Target) -> None:
        loop = asyncio.get_running_loop()
        schedule = target.recipe.schedule
        due = loop.time() + schedule.first_delay(self.rng.random())
        # Also ends when the target is replaced or removed, should a cancellation have been lost (tasks.py).
        while not self._lost.is_set() and self.targets.get(target.address) is target:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self._probe_once(target)
            except Exception as exc:  # a bug must not silently stop probing this backend
                log.exception("probe loop error", backend=target.address, error=repr(exc))
            due = schedule.next_start(due, loop.time(), self.rng.random())

    async def _probe_once(self, target: Target) -> None:
        async with self._probe_slots:
            started = time.monotonic()
            verdict = await target.recipe.prober.probe(target.probe)
            elapsed = time.monotonic() - started
        self._record(target, verdict, started, elapsed)
        status = target.state.status
        if status == "unknown":
            return
        if status != target.written:
            await self._write(target, status)

    def _record(self, target: Target, verdict: Verdict, started: float, elapsed: float) -> None:
        if target.probes:
            target.max_gap = max(target.max_gap, started - target.last_start)
        else:
            target.first_verdict_at = started + elapsed
        target.probes += 1
        target.last_start = started
        target.metrics.probe(verdict.ok, elapsed)
        before = target.state.status
        after = target.state.observe(verdict.ok)
        if after is None:
            return
        if before == "unknown":
            target.reason = f"first probe: {verdict.reason}"
        else:
            config = target.recipe.config
            count = config.rise if after == "up" else config.fall
            target.reason = f"{count} {'passed' if verdict.ok else 'failed'} probes: {verdict.reason}"
        metrics.observe_transition(target.address, after)
        # First verdicts are not changes of mind, and 1,000 of them arrive together at start-up: debug.
        emit = log.debug if before == "unknown" else log.info
        emit("health changed", backend=target.address, before=before, after=after, reason=target.reason)

    async def _write(self, target: Target, status: HealthStatus) -> None:
        fence = self._fence_for(target.address)
        if self.shards and fence is None:
            return  # its shard is no longer ours (the target is going)
        try:
            async with self._write_slots:
                await self.store.set_health(target.address, status, target.reason, fence=fence)
        except BackendNotFound:
            return  # removed meanwhile: the watch delivers the removal
        except Fenced:
            if self.shards:
                shard = shard_of(target.address, self.shards)
                log.warning("health write fenced: another replica holds its shard now", backend=target.address)
                if self.owned.get(shard) == fence:
                    self.own({s: lease for s, lease in self.owned.items() if s != shard})
                    if self.on_lost is not None:
                        self.on_lost(shard)
                return
            log.warning("health write fenced: another replica leads now", backend=target.address)
            self._lost.set()
            return
        except STORE_ERRORS as exc:
            if not self._redis_down:
                log.warning("cannot write health; retrying after the next probe", error=str(exc) or repr(exc))
                self._redis_down = True
            return
        if self._redis_down:
            log.info("health writes succeed again")
            self._redis_down = False
        target.written = status
