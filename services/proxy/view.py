"""The proxy's local view of the backends: store Snapshots and Events in, usable candidates out.

Pure bookkeeping (no I/O). The store's hashes are the truth; this replica's own passive ejections
are laid over them until they expire or the store clears them, so an ejection applies here at once,
before its publication reaches Redis (or while Redis is down).

Usability depends on time (ejections end, slow-start steps), so :meth:`LocalView.candidates` also
returns the next moment at which its answer changes: the owner rebuilds then, and not on every pick.

For large pools the owner computes candidates in a worker thread: :meth:`LocalView.state` is a frozen
copy of what the computation reads (``BackendView`` objects are replaced on change, never mutated,
so copying the dict is enough), :func:`compute_candidates` is pure, and :meth:`LocalView.commit`
folds its bookkeeping back in on the loop.

A full Snapshot of a large pool costs the loop no O(n) work in Python beyond copying its dict: the
addresses are sorted by the next computation (in the worker thread, see :func:`sort_addresses`), and
the backends it replaced are compared with the new ones and freed in slices (:meth:`LocalView.retire`;
100,000 replaced views freed at once stall the loop 15-30 ms).
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from services.proxy.policies import Candidate, ramp
from shared.config import Config
from shared.mirror import apply_event
from shared.models import AlgorithmSetting, Backend, BackendView, Ejection, Event, Health, Snapshot

# Entries of replaced views compared and freed per retire() step; a snapshot that replaces at most this
# many is retired at once.
RETIRE_SLICE = 2_000
# sort_addresses() sorts runs of this many (each holding the GIL ~1-2 ms), then merges them.
SORT_RUN = 4_096


class LocalView:
    def __init__(self, *, start_healthy: bool = False, reset_grace: float = 30.0) -> None:
        self.start_healthy = start_healthy
        # A store that comes back with a *lower* version lost its data (a Redis restarted without
        # persistence, or flushed). Its hashes are still the truth, but they are being refilled:
        # discovery re-adds backends within a poll, health re-probes them within an interval. Until
        # then an empty or all-"unknown" view would turn every request into a 503. So for up to
        # ``reset_grace`` seconds the backends that were up before the reset stay: a backend the
        # store has (again) keeps its last health until the health checker writes a verdict, and one
        # the store does not have yet stays as it was until discovery re-adds it. When the grace ends,
        # whatever the store never confirmed is dropped (backend) or reset to unknown (health).
        self.reset_grace = reset_grace
        self.resets = 0
        self.carry_until = math.inf
        self._carried_only: set[str] = set()  # kept from before the reset, not in the store (yet)
        self._carried_health: set[str] = set()  # health kept from before the reset, not re-probed (yet)
        self.backends: dict[str, BackendView] = {}
        self.algorithm = AlgorithmSetting()
        self.version = -1  # -1: nothing loaded yet
        self.source = "none"  # "store" once a snapshot arrived, "static" when started from the config
        self.local_ejections: dict[str, Ejection] = {}
        # The usable backends at the last candidates(): since when (slow start; -inf: warm) and their
        # Candidate (reused while unchanged). None before the first call (everything starts warm).
        self._known: dict[str, Seen] | None = None
        self._order: list[str] | None = None  # sorted addresses; None: to sort again
        self._members = 0  # moves whenever the set of addresses may have changed (see commit())
        # Backend dicts replaced by snapshots, still to compare with the view (departures) and free.
        self._retired: list[dict[str, BackendView]] = []
        # Told the address of every backend that leaves the view (removed, missing from a snapshot,
        # dropped after a reset's grace), so per-backend state elsewhere is pruned with it.
        self.on_departed: Callable[[str], None] | None = None

    # -- input -------------------------------------------------------------------------------

    def _departed(self, addresses: Iterable[str]) -> None:
        if self.on_departed is not None:
            for address in addresses:
                self.on_departed(address)

    def load_static(self, config: Config) -> None:
        """Start from the config's backends (Redis unreachable at startup): all assumed up."""
        previous = self.backends
        self.backends = {
            b.address: BackendView(
                backend=Backend(address=b.address, weight=b.weight, origin="static"),
                health=Health(status="up", reason="assumed: store unreachable at startup"),
            )
            for b in config.backends
        }
        self._departed([a for a in previous if a not in self.backends])
        self._order = None
        self._members += 1
        self.algorithm = AlgorithmSetting(name=config.algorithm)
        self.source = "static"

    def apply(self, item: Snapshot | Event, at: float | None = None) -> None:
        # BackendViews are replaced, never mutated: a state() copy handed to a worker stays frozen.
        if isinstance(item, Snapshot):
            now = time.time() if at is None else at
            previous = self.backends
            fresh_reset = self.source == "store" and item.version < self.version
            if fresh_reset:
                self.resets += 1
                self.carry_until = now + self.reset_grace
            self.backends = dict(item.backends)
            if now < self.carry_until:
                self._carry_over(previous, fresh_reset)
            self._order = None
            self._members += 1
            self.algorithm = item.algorithm
            self.version = item.version
            self.source = "store"
            if self._retired:  # (at most one replaced dict waits: the last snapshot's)
                self.retire(math.inf)
            self._retired.append(previous)
            if len(previous) <= RETIRE_SLICE:
                self.retire(RETIRE_SLICE)
            for address in [a for a in self.local_ejections if a not in self.backends]:
                del self.local_ejections[address]
            return
        self.version = item.version
        address = item.address or ""
        existed = address in self.backends
        apply_event(self.backends, item)  # the one rule for every store mirror (shared/mirror.py)
        kind = item.kind
        if kind in ("backend_added", "backend_updated"):
            if not existed and address in self.backends:
                self._members += 1
                if self._order is not None:
                    bisect.insort(self._order, address)
            self._carried_only.discard(address)
        elif kind == "backend_removed":
            self._carried_only.discard(address)
            self._carried_health.discard(address)
            if existed:
                self._departed((address,))
                self._members += 1
                if self._order is not None:
                    i = bisect.bisect_left(self._order, address)
                    if i < len(self._order) and self._order[i] == address:
                        del self._order[i]
            self.local_ejections.pop(address, None)
        elif kind == "health" and existed and item.health is not None:
            self._carried_health.discard(address)
        elif kind == "ejection" and existed and item.ejection is None:  # cleared (an operator, a passing check)
            self.local_ejections.pop(address, None)
        elif kind == "algorithm" and item.algorithm is not None:
            self.algorithm = item.algorithm

    def _carry_over(self, previous: Mapping[str, BackendView], fresh_reset: bool) -> None:
        """Lay what was up before a store reset over the (re-filling) store's backends."""
        if fresh_reset:
            carry: set[str] = set(previous)
        else:  # a later snapshot within the grace: only what is still unconfirmed
            carry = self._carried_only | self._carried_health
        self._carried_only, self._carried_health = set(), set()
        for address in carry:
            before = previous.get(address)
            if before is None or before.health.status != "up":
                continue
            current = self.backends.get(address)
            if current is None:
                self.backends[address] = before
                self._carried_only.add(address)
            elif current.health.status == "unknown":
                self.backends[address] = msgspec.structs.replace(current, health=before.health)
                self._carried_health.add(address)

    def end_carry(self, at: float) -> bool:
        """After the grace: drop what the store never re-added, forget health it never re-probed.
        True when the view changed (the owner rebuilds)."""
        if at < self.carry_until:
            return False
        self.carry_until = math.inf
        changed = bool(self._carried_only or self._carried_health)
        for address in self._carried_only:
            self.backends.pop(address, None)
        self._departed(self._carried_only)
        for address in self._carried_health:
            current = self.backends.get(address)
            if current is not None:
                self.backends[address] = msgspec.structs.replace(current, health=Health())
        self._carried_only, self._carried_health = set(), set()
        if changed:
            self._order = None
            self._members += 1
        return changed

    @property
    def retiring(self) -> bool:
        """Backends replaced by a snapshot wait for :meth:`retire`."""
        return bool(self._retired)

    def retire(self, budget: float = RETIRE_SLICE) -> bool:
        """Compare up to ``budget`` backends a snapshot replaced with the view (those no longer in it
        departed) and let them go; True while some remain. The owner calls it once per loop turn
        until done, while no worker thread reads the replaced views (a build's copy dropped in its
        thread would then free them all there, holding the GIL)."""
        backends, retired = self.backends, self._retired
        left = budget
        while retired and left > 0:
            previous = retired[0]
            gone = []
            while previous and left > 0:
                address, _ = previous.popitem()
                left -= 1
                if address not in backends:
                    gone.append(address)
            self._departed(gone)
            if not previous:
                retired.pop(0)
        return bool(retired)

    def eject_locally(self, address: str, ejection: Ejection) -> None:
        self.local_ejections[address] = ejection

    # -- output ------------------------------------------------------------------------------

    def ejection(self, address: str) -> Ejection | None:
        """The ejection in force for ``address``: the store's or our own, whichever lasts longer."""
        view = self.backends.get(address)
        stored = view.ejection if view is not None else None
        local = self.local_ejections.get(address)
        if local is None:
            return stored
        if stored is None or local.until > stored.until:
            return local
        return stored

    def usable(self, view: BackendView, at: float) -> bool:
        """Enabled, healthy (or unknown with ``start_healthy``), not ejected by anyone."""
        if not view.usable(start_healthy=self.start_healthy, at=at):
            return False
        local = self.local_ejections.get(view.address)
        return local is None or local.until <= at

    def ejected_count(self, at: float) -> int:
        return sum(1 for a in self.backends if (e := self.ejection(a)) is not None and e.until > at)

    def order(self) -> list[str]:
        """The addresses, sorted (kept up to date on additions and removals, sorted again after a snapshot)."""
        if self._order is None:
            self._order = sorted(self.backends)
        return self._order

    def state(self, *, copy: bool = True) -> ViewState:
        """What :func:`compute_candidates` reads; with ``copy`` (the default) a frozen copy that a worker
        thread may read while the view goes on changing (O(n) pointer copies, no per-backend work); the
        addresses, when they are to be sorted again, are then sorted by the computation."""
        if copy:
            return ViewState(
                backends=self.backends.copy(),  # (not dict(): that one re-inserts every entry once any was deleted)
                order=tuple(self._order) if self._order is not None else None,
                local_ejections=self.local_ejections.copy(),
                known=self._known,  # replaced by commit(), never mutated: no copy needed
                start_healthy=self.start_healthy,
                members=self._members,
            )
        return ViewState(self.backends, self.order(), self.local_ejections, self._known, self.start_healthy)

    def commit(self, result: Candidates) -> None:
        """Fold a :func:`compute_candidates` result back in (on the owner's thread)."""
        self._known = result.known
        if self._order is None and result.members == self._members:  # (sorted by the computation)
            self._order = list(result.order)
        for address, ejection in result.expired:
            if self.local_ejections.get(address) is ejection:
                del self.local_ejections[address]

    def candidates(self, at: float, slow_start_sec: float) -> tuple[tuple[Candidate, ...], float]:
        """The usable backends (sorted by address) with their slow-start factor, and the next time
        at which this answer changes by itself (an ejection ends, a ramp step) or +inf."""
        result = compute_candidates(self.state(copy=False), at, slow_start_sec)
        self.commit(result)
        return result.candidates, result.next_change


class Seen(msgspec.Struct, frozen=True, gc=False):
    """A usable backend at the last computation: since when (slow start; -inf: warm), its Candidate.
    One per backend, so never tracked by the garbage collector (nor is a dict of them)."""

    since: float
    candidate: Candidate


@dataclass(frozen=True, slots=True)
class ViewState:
    """The inputs of :func:`compute_candidates` (see :meth:`LocalView.state`)."""

    backends: Mapping[str, BackendView]
    order: Sequence[str] | None  # the addresses of ``backends`` sorted; None: to sort (sort_addresses)
    local_ejections: Mapping[str, Ejection]
    known: Mapping[str, Seen] | None
    start_healthy: bool
    members: int = -1  # LocalView._members when copied (-1: never adopted back)


@dataclass(frozen=True, slots=True)
class Candidates:
    """The output of :func:`compute_candidates`."""

    candidates: tuple[Candidate, ...]
    next_change: float
    known: dict[str, Seen]  # the usable ones: since when, and their Candidate
    expired: list[tuple[str, Ejection]]  # this replica's ejections that are over (to forget)
    order: Sequence[str] = ()  # the sorted addresses it went through
    members: int = -1  # the ViewState's


def compute_candidates(state: ViewState, at: float, slow_start_sec: float) -> Candidates:
    """The usable backends at ``at``, sorted by address, with their slow-start factor. Pure.

    Usable: enabled, healthy (or unknown with ``start_healthy``), not ejected by anyone (the store's
    ejection or this replica's, whichever lasts longer). A backend usable now but not at the previous
    call joined or recovered: it ramps up from ``at``. About 1 µs a backend (it runs on every view
    change), hence the inlined checks instead of ``BackendView.usable``.
    """
    known = state.known
    first = known is None
    previous = known if known is not None else {}
    backends = state.backends
    local_ejections = state.local_ejections
    start_healthy = state.start_healthy
    out: list[Candidate] = []
    new_known: dict[str, Seen] = {}
    next_change = math.inf
    inf = math.inf
    order = state.order if state.order is not None else sort_addresses(backends)
    for address in order:
        view = backends[address]
        ejection = view.ejection
        if local_ejections:
            local = local_ejections.get(address)
            if local is not None and (ejection is None or local.until > ejection.until):
                ejection = local
        if ejection is not None and ejection.until > at:
            if ejection.until < next_change:
                next_change = ejection.until
            continue
        backend = view.backend
        if backend.state != "enabled":
            continue
        status = view.health.status
        if status != "up" and (status != "unknown" or not start_healthy):
            continue
        entry = previous.get(address)
        if entry is None:
            since = -inf if first else at  # joined or recovered: ramp up from now
            candidate = None
        else:
            since, candidate = entry.since, entry.candidate
        factor = 1.0
        if since != -inf:
            factor, step_at = ramp(since, at, slow_start_sec)
            if step_at is not None and step_at < next_change:
                next_change = step_at
        weight = backend.weight
        if candidate is None or candidate.weight != weight or candidate.factor != factor:
            candidate = Candidate(address, weight, factor)
        new_known[address] = Seen(since, candidate) if entry is None or entry.candidate is not candidate else entry
        out.append(candidate)
    expired = [(a, e) for a, e in local_ejections.items() if e.until <= at]
    return Candidates(tuple(out), next_change, new_known, expired, order, state.members)


def sort_addresses(addresses: Iterable[str]) -> list[str]:
    """``sorted(addresses)``, for a worker thread: one sort of 100,000 addresses holds the GIL 10-30 ms
    (no bytecode runs during it, so the loop cannot take the GIL back); runs of ``SORT_RUN`` are
    sorted one by one and merged in Python, which lets the loop in every switch interval."""
    keys = list(addresses)
    if len(keys) <= SORT_RUN:
        keys.sort()
        return keys
    runs = [sorted(keys[i : i + SORT_RUN]) for i in range(0, len(keys), SORT_RUN)]
    return list(heapq.merge(*runs))
