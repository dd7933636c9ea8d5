"""The Redis-coordinated :class:`~services.proxy.balancer.Balancer`.

Hot path (``pick``, which starts a request, and ``finished``): dict lookups and the policy's
O(1)/O(log n) work; it never awaits anything. Background tasks (started by :func:`open_store_balancer`):

- ``watch``: ``Store.watch()`` → the local view (snapshot, then events; a fresh snapshot after every
  reconnect). Each change marks the policy dirty and schedules one rebuild on the loop (coalescing
  bursts); ``pick`` also rebuilds when dirty or when a time-based change is due (an ejection ends, a
  slow-start step). While Redis is down nothing arrives and picks go on with the last view.
  A rebuild whose estimated cost is large (``build_cost`` above ``SYNC_BUILD_MAX_SEC``: ip_hash past
  ~50 backends, the others past ~3,000) runs in a worker thread on a frozen copy of the view (the
  policies and ``compute_candidates`` are pure) while picks go on with the previous policy, each
  pick checked against the current view so nothing that became unusable is chosen; the new policy
  is swapped in on the loop. Changes arriving meanwhile are coalesced into one more build.
- ``refresh``: every ``refresh_interval`` (``redis.counts_sync_sec``) the other replicas' in-flight contributions
  (``Store.global_inflight(exclude=own id)``); the global count of a backend is that plus this
  replica's exact local count (``Replica.local``).
- ``publish``: passive ejections decided here are applied locally at once and published with
  ``Store.set_ejection`` from this task, retried while Redis is unreachable.
- the ``Replica`` heartbeat, which pushes the local counts with batched HINCRBY.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, NamedTuple

from redis.exceptions import RedisError

from services.proxy.balancer import Upstream
from services.proxy.outlier import OutlierDetector
from services.proxy.policies import Counts, Journaled, Policy, PolicyEnv, build_cost, build_policy
from services.proxy.policies.ewma import record as record_latency
from services.proxy.stats import Histogram
from services.proxy.view import RETIRE_SLICE, Candidates, LocalView, ViewState, compute_candidates
from shared.aio import Backoff, Turns, cancel_and_wait
from shared.config import Config
from shared.gc_tuning import freeze_new_objects
from shared.logs import get_logger
from shared.models import Ejection, Event, Snapshot
from shared.replica import Replica
from shared.store import STORE_ERRORS, UNAVAILABLE, BackendNotFound, Store

log = get_logger("balancer")

SERVICE = "proxy"

# Builds estimated to take longer than this run in a worker thread, not on the event loop.
SYNC_BUILD_MAX_SEC = 0.008
# From this many usable backends on, an install freezes what is tracked (see shared/gc_tuning.py): a
# collection walking the new policy's containers would take longer than the loop may stall. Below,
# it costs a few ms and nothing is frozen.
FREEZE_MIN_BACKENDS = 50_000
# Events applied back to back before the loop gets a turn (each costs a few µs at 100,000 backends, twice
# that while a build shares the GIL): at most this many, for at most this long.
APPLY_BATCH = 100
APPLY_SLICE_SEC = 0.002
# Picks tried with a policy older than the view before scanning it for a usable backend.
STALE_PICK_TRIES = 16


class Built(NamedTuple):
    """What a build makes, to be installed on the loop."""

    result: Candidates
    policy: Policy
    upstreams: dict[str, Upstream]  # one per candidate: the policy's picks are looked up there


def _build(
    name: str, state: ViewState, at: float, slow_start_sec: float, env: PolicyEnv, upstreams: Mapping[str, Upstream]
) -> Built:
    """Candidates, policy and upstreams from a frozen view: pure, so it may run in a worker thread.
    ``upstreams`` (the ones in force: replaced on install, never mutated) are reused where they exist."""
    result = compute_candidates(state, at, slow_start_sec)
    fresh: dict[str, Upstream] = {}
    for c in result.candidates:
        address = c.address
        upstream = upstreams.get(address)
        fresh[address] = upstream if upstream is not None else Upstream.from_address(address)
    return Built(result, build_policy(name, result.candidates, env), fresh)


class StoreBalancer:
    def __init__(
        self,
        config: Config,
        store: Store,
        replica: Replica,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        refresh_interval: float = 0.1,
    ) -> None:
        self.config = config
        self.store = store
        self.replica = replica
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.view = LocalView(
            start_healthy=config.health_check.start_healthy,
            reset_grace=max(30.0, 5 * float(config.health_check.interval_sec)),
        )
        # Backends that left the view; once nothing is in flight to one here, whatever else keeps
        # per-backend state (the data plane's counters, its idle connections) is told to forget it
        # through ``forget_listeners``, and so is the replica (its request totals). See prune().
        self._departed: set[str] = set()
        self.forget_listeners: list[Callable[[str], None]] = []
        self.view.on_departed = self._left
        self._retiring: asyncio.Task[None] | None = None  # frees what a large snapshot replaced (_retire)
        self._local = replica.local  # this replica's exact in-flight counts (the hot path updates them)
        self.counts = Counts(self._local)
        self.env = PolicyEnv(
            counts=self.counts,
            rng=rng or random.Random(),
            clock=clock,
            hash_epsilon=config.balancing.hash_epsilon,
            ewma_decay_sec=config.balancing.ewma_decay_sec,
        )
        self.outlier = OutlierDetector(config.balancing.outlier, replica.id)
        self._failing = self.outlier.failing
        # Affinity key source for ``ip_hash`` ("client_ip", "header:NAME", "cookie:NAME").
        self.hash_key = config.balancing.hash_key
        self._policy: Policy = build_policy("round_robin", [], self.env)
        self._on_count: Callable[[str], None] | None = None  # policy.count_changed, if it reads counts
        self._acquire: Callable[[str, Collection[str]], str | None] = self._policy.pick
        # What pick() and finished() call besides the local count (None: nothing), chosen per policy.
        self._on_start: Callable[[str], None] | None = None
        self._on_end: Callable[[str], None] | None = None
        self._learns = False  # the policy learns from latencies (ewma)
        # One per candidate of the policy in force; replaced with it, never mutated (a build in a
        # worker thread reads it).
        self._upstreams: dict[str, Upstream] = {}
        self._dirty = True
        # pick()'s one check: True while the policy may be behind the view (dirty, a build running,
        # a time-based change due). With the real clock a loop timer sets it when the next
        # time-based change is due; with an injected clock (tests) it stays True and pick() reads
        # the clock every time.
        self._slow = True
        self._timed = clock is time.time
        self._timer: asyncio.TimerHandle | None = None
        self._rebuild_scheduled = False
        self._building: asyncio.Task[None] | None = None  # a build running in a worker thread
        self._next_change = math.inf
        self._pending_ejections: dict[str, Ejection] = {}
        self._publish_wake = asyncio.Event()
        self.first_snapshot = asyncio.Event()
        self.changed = asyncio.Event()  # set whenever the view changes (tests and diagnostics wait on it)
        self.rebuilds = 0
        self.turns = Turns(APPLY_BATCH, APPLY_SLICE_SEC)  # given to the loop while applying bursts
        self.snapshots = 0  # full snapshots applied (1, plus one per re-sync)
        self.refresh_rounds = 0  # periods of the refresh task so far (tests wait on it)
        # Observability (read by the proxy's /metrics collector at scrape time).
        self.ejections: dict[str, int] = {}  # passive ejections decided here, per backend
        self.sync_lag = Histogram()  # event written (its `at`) -> applied here, seconds
        self._refresh_ok = True  # the last refresh reached Redis
        # Called with every Snapshot and Event applied (the live rate-limit rules follow their events).
        self.apply_listeners: list[Callable[[Snapshot | Event], None]] = []
        # A pool with connection limits reads the global counts whatever the policy, and hears of each read.
        self.reads_counts = False
        self.refresh_listeners: list[Callable[[], None]] = []

    # -- settings in force -------------------------------------------------------------------

    @property
    def algorithm(self) -> str:
        """The policy in use: the store's setting, or the config's while the store never set one."""
        setting = self.view.algorithm
        if self.view.source == "store" and setting.updated_at == 0.0:
            return self.config.algorithm
        return setting.name

    def _sync_hash_key(self) -> None:
        # An attribute, not a property: the proxy reads it on every request.
        self.hash_key = self.view.algorithm.hash_key or self.config.balancing.hash_key

    @property
    def slow_start_sec(self) -> float:
        override = self.view.algorithm.slow_start_sec
        return float(self.config.balancing.slow_start_sec if override is None else override)

    @property
    def redis_up(self) -> bool:
        """Redis answered this replica's last counter push and (when the policy reads counts) refresh."""
        return self._refresh_ok and self.replica.reachable

    # -- view --------------------------------------------------------------------------------

    @property
    def inflight(self) -> dict[str, int]:
        """This replica's exact in-flight counts per backend."""
        return self.replica.local

    def apply(self, item: Snapshot | Event) -> None:
        resets = self.view.resets
        self.view.apply(item, self.clock())
        self._sync_hash_key()
        for listener in self.apply_listeners:
            listener(item)
        if self.view.resets != resets:
            log.warning(
                "the store went back to an older version (data lost?): keeping what was up for a grace period",
                version=self.view.version,
                grace_sec=self.view.reset_grace,
            )
        if isinstance(item, Event) and item.at > 0.0:
            self.sync_lag.observe(max(0.0, time.time() - item.at))
        if isinstance(item, Snapshot):
            self.snapshots += 1
            self.first_snapshot.set()
            if self.view.retiring:
                self._start_retiring()
        self._mark_dirty()

    def _left(self, address: str) -> None:
        """A backend left the view: its latency and outlier state go now (no growth with backend
        churn); what the data plane and the replica keep, once nothing is in flight (prune())."""
        self._departed.add(address)
        self.env.latency.pop(address, None)
        self.outlier.forget(address)
        self.ejections.pop(address, None)

    def _start_retiring(self) -> None:
        if self._retiring is not None and not self._retiring.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (pure use): at once
            self.view.retire(math.inf)
            return
        self._retiring = loop.create_task(self._retire(), name="balancer-retire")

    async def _retire(self) -> None:
        """Compare and free the backends a large snapshot replaced, a slice per loop turn (100,000 freed
        at once stall the loop 15-30 ms), once no build started before the snapshot still holds a copy
        of them (dropped in its worker thread, it would free them all there, holding the GIL)."""
        while True:
            await asyncio.sleep(0)  # (a slice per loop turn, the first not in the Snapshot's)
            await self.built()
            if not self.view.retire(RETIRE_SLICE):
                return

    def _mark_dirty(self) -> None:
        self._dirty = True
        self._slow = True
        self.changed.set()
        if not self._rebuild_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (pure use): pick() rebuilds
            self._rebuild_scheduled = True
            loop.call_soon(self._scheduled_rebuild)

    def _scheduled_rebuild(self) -> None:
        self._rebuild_scheduled = False
        if self._dirty:
            self._refresh_policy()

    @property
    def building(self) -> bool:
        """A build runs in a worker thread; the policy in force is older than the view."""
        return self._building is not None

    def _refresh_policy(self) -> None:
        """Bring the policy up to date with the view: at once when cheap, else in a worker thread."""
        if self._building is not None:
            return  # the running build goes round once more when it ends (it sees _dirty)
        if build_cost(self.algorithm, len(self.view.backends)) > SYNC_BUILD_MAX_SEC:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop (pure use): build here
            else:
                self._building = loop.create_task(self._build_in_background(), name="balancer-rebuild")
                return
        self.rebuild()

    async def built(self) -> None:
        """Return once no build runs in a worker thread (the policy then reflects the view)."""
        while self._building is not None:
            await asyncio.shield(self._building)

    def _apply_settings(self) -> None:
        override = self.view.algorithm.hash_epsilon
        self.env.hash_epsilon = self.config.balancing.hash_epsilon if override is None else override

    def _behind(self) -> bool:
        """The view changed, or a time-based change fell due, since the policy in force was built."""
        return self._dirty or self.clock() >= self._next_change

    def _build_inputs(
        self, *, copy: bool, at: float | None = None
    ) -> tuple[str, ViewState, float, float, PolicyEnv, Mapping[str, Upstream]]:
        """What a build reads, taken on the loop: policy name, view state, time, slow-start window,
        policy environment, upstreams in force."""
        now = self.clock() if at is None else at
        self.view.end_carry(now)
        self._apply_settings()
        return self.algorithm, self.view.state(copy=copy), now, self.slow_start_sec, self.env, self._upstreams

    def rebuild(self, at: float | None = None) -> None:
        """Build the policy from the view here and now: O(n), on view changes only."""
        self._install(_build(*self._build_inputs(copy=False, at=at)))
        self._dirty = False
        self._settle()

    def _settle(self) -> None:
        """Recompute pick()'s fast-path flag and arm the timer of the next time-based change."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._slow = self._dirty or self._building is not None or not self._timed
        if self._slow or self._next_change == math.inf:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (pure use): pick() reads the clock from now on
            self._slow, self._timed = True, False
            return
        self._timer = loop.call_later(max(0.0, self._next_change - self.clock()), self._change_due)

    def _change_due(self) -> None:
        self._timer = None
        self._slow = True

    async def _build_in_background(self) -> None:
        """Build in a worker thread until the policy reflects the view; picks meanwhile go on with the
        previous policy (checked against the view, see :meth:`_pick_usable`). One build at a time: the
        changes that arrive during a build are folded into the next round, built from the latest view."""
        loop = asyncio.get_running_loop()
        try:
            # Not in the turn that made the view change: applying a large snapshot (~3 ms at 100,000)
            # and the copy a build takes of the view (as much) are two turns of the loop.
            await asyncio.sleep(0)
            while self._behind():
                self._dirty = False
                installs = self.rebuilds
                if not isinstance(self.policy, Journaled):
                    self.policy = Journaled(self.policy)  # remembers count changes during the build
                built = await loop.run_in_executor(None, _build, *self._build_inputs(copy=True))
                large = len(built.result.candidates) >= FREEZE_MIN_BACKENDS
                retired: list[object] = []
                if self.rebuilds == installs:  # else a synchronous rebuild() installed a newer one meanwhile
                    retired = self._install(built)
                del built
                # What the install replaced is freed one piece a turn (each ~1 ms at 100,000: deallocating
                # a large container is one C call that no GIL switch interrupts), before the freeze.
                while retired:
                    await asyncio.sleep(0)
                    retired.pop()
                if large:
                    freeze_new_objects()  # no collection walks its new per-backend containers
                # The install and the next copy of the view (~5 ms each at 100,000): in separate turns
                # with the timers that fell due in between (sleep(0) would run this task again first).
                await asyncio.sleep(0.001)
        except Exception as exc:  # a bug: keep serving with the policy in force, retry on the next change
            log.error("policy rebuild failed", error=str(exc) or repr(exc))
        finally:
            if isinstance(self.policy, Journaled):  # not installed (failed, cancelled)
                self.policy = self.policy.inner
            self._building = None
            self._settle()

    def _install(self, built: Built) -> list[object]:
        """Swap a built policy in (on the loop, O(1) but for the count changes to replay): its
        upstreams (first: a pick must find one), the view's bookkeeping, rotation carried over,
        count changes seen while it was built elsewhere replayed. Returns what it replaced, for the
        caller to let go of (the previous policy and upstreams)."""
        result, policy = built.result, built.policy
        retired: list[object] = [self._upstreams]
        self._upstreams = built.upstreams
        self.view.commit(result)
        previous = self.policy
        changed: set[str] = set()
        if isinstance(previous, Journaled):
            changed = previous.changed
            previous = previous.inner
        policy.inherit(previous)
        for address in changed:
            policy.count_changed(address)
        self.policy = policy
        retired.append(previous)
        self._next_change = min(result.next_change, self.view.carry_until)
        self.rebuilds += 1
        return retired

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # What the hot path calls is decided here, once per policy, not on every request.
        if policy.reads_total and not self._policy.reads_total:  # counts.local_total was not kept
            # (the local table is the replica's, shared by every pool's balancer: count this pool's, the
            # backends in its view and those that left it with requests still in flight)
            backends, departed = self.view.backends, self._departed
            self.counts.local_total = sum(n for a, n in self._local.items() if a in backends or a in departed)
        self._policy = policy
        self._on_count = policy.count_changed if policy.reads_counts else None
        self._acquire = policy.acquire if policy.counts_acquired else policy.pick
        self._learns = policy.learns
        if policy.reads_total:
            self._on_start, self._on_end = self._start_total, self._end_total
        elif policy.counts_acquired:  # acquire() counted the start; released() takes it off
            self._on_start, self._on_end = None, policy.released
        else:
            self._on_start = self._on_end = self._on_count

    def _start_total(self, address: str) -> None:
        self.counts.local_total += 1
        if self._on_count is not None:
            self._on_count(address)

    def _end_total(self, address: str) -> None:
        self.counts.local_total -= 1
        if self._on_count is not None:
            self._on_count(address)

    def _pick_usable(self, key: str, exclude: Collection[str]) -> str | None:
        """A pick by a policy older than the view: what it chooses is checked against the view (O(1)),
        and what became unusable is excluded and the pick retried; a bounded number of tries, then
        a scan of the policy's candidates (rare: most of the pool became unusable at once)."""
        view, now = self.view, self.clock()
        skipped: set[str] | None = None
        for _ in range(STALE_PICK_TRIES):
            address = self.policy.pick(key, exclude if skipped is None else skipped)
            if address is None:
                return None
            state = view.backends.get(address)
            if state is not None and view.usable(state, now):
                return address
            if skipped is None:
                skipped = set(exclude)
            skipped.add(address)
        for c in self.policy.candidates:
            if (
                c.address not in exclude
                and (state := view.backends.get(c.address)) is not None
                and view.usable(state, now)
            ):
                return c.address
        return None

    # -- Balancer ----------------------------------------------------------------------------

    # pick/finished run once per request each: a dict update of the local count, and the policy is
    # only called when it uses what changed (count-based policies, latency-aware ones). Every
    # bytecode here costs about 14 ns per request in a proxy under load (see bench/README.md).

    def pick(self, key: str, exclude: Collection[str] = ()) -> Upstream | None:
        if self._slow:
            return self._pick_slow(key, exclude)
        address = self._acquire(key, exclude)
        if address is None:
            return None
        local = self._local
        local[address] = local.get(address, 0) + 1
        if self._on_start is not None:
            self._on_start(address)
        return self._upstreams[address]

    def _pick_slow(self, key: str, exclude: Collection[str]) -> Upstream | None:
        if self._behind():
            self._refresh_policy()
        elif self._timed and self._building is None:
            self._settle()  # a timer that fired early: arm it again
        # While a build runs in a worker thread, the policy in force is older than the view.
        address = self.policy.pick(key, exclude) if self._building is None else self._pick_usable(key, exclude)
        if address is None:
            return None
        upstream = self._upstreams[address]
        self.started(upstream)
        return upstream

    def started(self, upstream: Upstream) -> None:
        """One more request to ``upstream`` (pick counts its own; tests and tools add more)."""
        address = upstream.address
        local = self._local
        local[address] = local.get(address, 0) + 1
        if self._policy.reads_total:
            self.counts.local_total += 1
        if self._on_count is not None:
            self._on_count(address)

    def finished(self, upstream: Upstream, ok: bool = True, latency: float | None = None) -> None:
        address = upstream.address
        self._local[address] -= 1  # (an entry left at 0 is dropped by the replica's heartbeat task)
        if self._on_end is not None:
            self._on_end(address)
        if self._learns:
            record_latency(self.env, address, latency, ok, self.clock())
        if ok:
            if self._failing:  # (usually empty: one check)
                self.outlier.succeeded(address)
        else:
            self._failed(address)

    def _failed(self, address: str) -> None:
        """A failed attempt: passive health (outlier detection), maybe an ejection here and now.
        (Apart from finished(): its closure would make every request pay for cell variables.)"""
        now = self.clock()
        if address not in self.view.backends:
            return
        ejection = self.outlier.record(
            address,
            False,
            now,
            pool_size=len(self.view.backends),
            ejected=lambda: self.view.ejected_count(now),
            current=self.view.ejection(address),
        )
        if ejection is not None:
            log.warning(
                "backend ejected", backend=address, seconds=round(ejection.until - now, 3), count=ejection.count
            )
            self.view.eject_locally(address, ejection)
            self.ejections[address] = self.ejections.get(address, 0) + 1
            self._pending_ejections[address] = ejection
            self._publish_wake.set()
            self._mark_dirty()

    # -- background tasks --------------------------------------------------------------------

    async def follow(self, items: AsyncIterable[Snapshot | Event]) -> None:
        """Apply what the store's watch yields. A burst of events may arrive already buffered (no
        await in between would suspend): the loop gets a turn every ``APPLY_BATCH`` of them or
        ``APPLY_SLICE_SEC``, whichever comes first."""
        async for item in items:
            self.apply(item)
            await self.turns.after_item()

    async def watch(self) -> None:
        await watch_store(self.store, self.follow)

    def prune(self) -> int:
        """Forget the backends that left the view and have nothing in flight from here any more
        (one still in flight would count again when it ends: it waits for a later round). A backend
        that came back meanwhile is kept. Returns how many were forgotten."""
        if not self._departed:
            return 0
        local, backends, departed = self._local, self.view.backends, self._departed
        gone = [a for a in departed if a not in backends and not local.get(a)]
        departed.difference_update(gone)
        departed.difference_update([a for a in departed if a in backends])  # back again
        for address in gone:
            for listener in self.forget_listeners:
                listener(address)
            self.replica.forget(address)
        return len(gone)

    async def refresh(self) -> None:
        while True:
            self.refresh_rounds += 1
            self.prune()
            others: dict[str, int] | None = {}
            # Round robin and weighted never read counts: no Redis read every interval. What was read
            # before is dropped, so a switch back starts from this replica's exact counts (the next
            # read follows within one interval).
            if self.uses_counts:
                others = await self.read_others()
            self.take_others(others)
            await asyncio.sleep(self.refresh_interval)

    @property
    def uses_counts(self) -> bool:
        """The policy in force reads global in-flight counts, or a connection limit does (the refresh reads
        them from Redis)."""
        return self._policy.uses_counts or self.reads_counts

    async def read_others(self) -> dict[str, int] | None:
        """The other replicas' in-flight counts; None when Redis did not answer."""
        try:
            return await self.store.global_inflight(exclude=self.replica.id)
        except STORE_ERRORS as exc:
            if self._refresh_ok:  # (once per outage)
                log.warning("cannot read global in-flight counts; using the last ones", error=str(exc))
            return None

    def take_others(self, others: Mapping[str, int] | None) -> None:
        """The other replicas' counts as read (None: not read; the last ones stay)."""
        if others is not None:
            for address in self.counts.set_others(others):
                self.policy.count_changed(address)
        self._refresh_ok = others is not None
        for listener in self.refresh_listeners:
            listener()

    async def publish(self) -> None:
        backoff = Backoff(first=0.05, cap=2.0)
        while True:
            await self._publish_wake.wait()
            self._publish_wake.clear()
            while self._pending_ejections:
                address, ejection = next(iter(self._pending_ejections.items()))
                try:
                    await self.store.set_ejection(address, ejection)
                except UNAVAILABLE:  # (before RedisError: redis' ConnectionError is one)
                    await asyncio.sleep(backoff.next())
                    continue
                except (BackendNotFound, RedisError):
                    pass  # removed meanwhile, or refused: nothing to retry
                backoff.reset()
                if self._pending_ejections.get(address) is ejection:
                    del self._pending_ejections[address]

    def background(self) -> list[asyncio.Task[None]]:
        """The build and retire tasks running now (stopped with the balancer's own tasks)."""
        return [t for t in (self._building, self._retiring) if t is not None]

    def reconfigure(self, config: Config) -> None:
        """Run with ``config`` (a pool's settings changed in the store); new outlier settings take effect at
        once, with a new detector (its counts start over)."""
        self.config = config
        if self.outlier.config != config.balancing.outlier:
            self.outlier = OutlierDetector(config.balancing.outlier, self.replica.id)
            self._failing = self.outlier.failing

    async def start_from(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for the store's first snapshot; else serve the config's backends."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.first_snapshot.wait(), wait)
        if not self.first_snapshot.is_set():
            log.warning("no snapshot from the store yet; serving the configured backends", waited_sec=wait)
            self.view.load_static(self.config)
            self._mark_dirty()
        if self._dirty:  # (else the rebuild scheduled by the snapshot already ran)
            self._refresh_policy()
        await self.built()


async def watch_store(store: Store, follow: Callable[[AsyncIterable[Snapshot | Event]], Awaitable[None]]) -> None:
    """``follow`` what ``store.watch()`` yields, for ever: the watch rides out outages itself; anything else
    (a bug) is logged and the watch starts again (with a fresh snapshot)."""
    while True:
        try:
            await follow(store.watch())
        except Exception as exc:
            log.error("store watch failed; restarting it", error=str(exc) or repr(exc))
            await asyncio.sleep(1.0)


def proxy_replica(config: Config, store: Store, listen: str = "") -> Replica:
    """This proxy process as a replica of the store: its heartbeat and in-flight counters."""
    return Replica(
        store,
        SERVICE,
        ttl=config.redis.replica_ttl_sec,
        heartbeat=config.redis.heartbeat_sec,
        flush_interval=float(config.redis.counts_sync_sec),
        listen=listen,
    )


@contextlib.asynccontextmanager
async def running_replica(config: Config, store: Store, replica: Replica | None, listen: str) -> AsyncIterator[Replica]:
    """``replica`` if given (its owner runs it); else this process's own (:func:`proxy_replica`), its heartbeat
    running inside the context, deregistered on exit."""
    if replica is not None:
        yield replica
        return
    own = proxy_replica(config, store, listen)
    heartbeat = asyncio.create_task(own.run(), name="replica-heartbeat")
    try:
        yield own
    finally:
        await cancel_and_wait([heartbeat])
        await own.deregister()


@contextlib.asynccontextmanager
async def open_store_balancer(
    config: Config,
    store: Store,
    *,
    replica: Replica | None = None,
    listen: str = "",
    first_snapshot_timeout: float = 2.0,
    **options: Any,
) -> AsyncIterator[StoreBalancer]:
    """A running StoreBalancer: its watch, refresh, publish (and, unless ``replica`` is given, heartbeat)
    tasks run inside the context and are stopped on exit (the replica deregistered if we own it)."""
    options.setdefault("refresh_interval", float(config.redis.counts_sync_sec))
    async with running_replica(config, store, replica, listen) as replica:
        balancer = StoreBalancer(config, store, replica, **options)
        tasks = [
            asyncio.create_task(balancer.watch(), name="balancer-watch"),
            asyncio.create_task(balancer.refresh(), name="balancer-refresh"),
            asyncio.create_task(balancer.publish(), name="balancer-publish"),
        ]
        try:
            await balancer.start_from(first_snapshot_timeout)
            yield balancer
        finally:
            await cancel_and_wait([*tasks, *balancer.background()])  # re-cancels: 3.11 can lose a cancel in redis-py
