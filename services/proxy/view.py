"""The proxy's local view of the backends: store Snapshots and Events in, usable candidates out.

Pure bookkeeping (no I/O). The store's hashes are the truth; this replica's own passive ejections
are laid over them until they expire or the store clears them, so an ejection applies here at once,
before its publication reaches Redis (or while Redis is down).

Usability depends on time (ejections end, slow-start steps), so :meth:`LocalView.candidates` also
returns the next moment at which its answer changes: the owner rebuilds then, and not on every pick.
"""

from __future__ import annotations

import math

from services.proxy.policies import Candidate, ramp
from shared.config import Config
from shared.models import AlgorithmSetting, Backend, BackendView, Ejection, Event, Health, Snapshot


class LocalView:
    def __init__(self, *, start_healthy: bool = False) -> None:
        self.start_healthy = start_healthy
        self.backends: dict[str, BackendView] = {}
        self.algorithm = AlgorithmSetting()
        self.version = -1  # -1: nothing loaded yet
        self.source = "none"  # "store" once a snapshot arrived, "static" when started from the config
        self.local_ejections: dict[str, Ejection] = {}
        self._since: dict[str, float] = {}  # usable since (slow start); -inf: warm
        self._usable: set[str] | None = None  # usable set at the last candidates() call

    # -- input -------------------------------------------------------------------------------

    def load_static(self, config: Config) -> None:
        """Start from the config's backends (Redis unreachable at startup): all assumed up."""
        self.backends = {
            b.address: BackendView(
                backend=Backend(address=b.address, weight=b.weight, origin="static"),
                health=Health(status="up", reason="assumed: store unreachable at startup"),
            )
            for b in config.backends
        }
        self.algorithm = AlgorithmSetting(name=config.algorithm)
        self.source = "static"

    def apply(self, item: Snapshot | Event) -> None:
        if isinstance(item, Snapshot):
            self.backends = dict(item.backends)
            self.algorithm = item.algorithm
            self.version = item.version
            self.source = "store"
            for address in [a for a in self.local_ejections if a not in self.backends]:
                del self.local_ejections[address]
            return
        self.version = item.version
        address = item.address or ""
        current = self.backends.get(address)
        if item.kind in ("backend_added", "backend_updated") and item.backend is not None:
            if current is None:
                self.backends[address] = BackendView(backend=item.backend)
            else:
                current.backend = item.backend
        elif item.kind == "backend_removed":
            self.backends.pop(address, None)
            self.local_ejections.pop(address, None)
        elif item.kind == "health" and current is not None and item.health is not None:
            current.health = item.health
        elif item.kind == "ejection" and current is not None:
            current.ejection = item.ejection
            if item.ejection is None:  # cleared (by an operator or a passing health check)
                self.local_ejections.pop(address, None)
        elif item.kind == "algorithm" and item.algorithm is not None:
            self.algorithm = item.algorithm

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

    def candidates(self, at: float, slow_start_sec: float) -> tuple[list[Candidate], float]:
        """The usable backends (sorted by address) with their slow-start factor, and the next time
        at which this answer changes by itself (an ejection ends, a ramp step) or +inf."""
        first = self._usable is None
        usable: set[str] = set()
        out: list[Candidate] = []
        next_change = math.inf
        for address in sorted(self.backends):
            view = self.backends[address]
            ejection = self.ejection(address)
            if ejection is not None and ejection.until > at:
                next_change = min(next_change, ejection.until)
            if not self.usable(view, at):
                continue
            usable.add(address)
            if first:
                self._since[address] = -math.inf
            elif self._usable is not None and address not in self._usable:
                self._since[address] = at  # joined or recovered: ramp up from now
            factor, step_at = ramp(self._since.get(address, -math.inf), at, slow_start_sec)
            if step_at is not None:
                next_change = min(next_change, step_at)
            out.append(Candidate(address, view.backend.weight, factor))
        for address in [a for a in self._since if a not in usable]:
            del self._since[address]
        for address in [a for a, e in self.local_ejections.items() if e.until <= at]:
            del self.local_ejections[address]
        self._usable = usable
        return out, next_change
