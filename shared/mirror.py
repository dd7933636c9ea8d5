"""A local copy of the store's backends, fed by ``Store.watch()``: how a Snapshot or an Event changes it.

One rule for every reader that keeps such a copy (the proxy's ``LocalView``, the admin's snapshot):
a Snapshot replaces everything, an Event changes one backend (or the algorithm). ``BackendView``
objects are replaced, never mutated, so a shallow copy of the dict is a frozen picture of it.
Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import msgspec

from shared.models import AlgorithmSetting, BackendView, Event, PoolSetting, RouteTableSetting, Snapshot


def apply_event(backends: dict[str, BackendView], event: Event) -> None:
    """Apply one change to ``backends`` (by address). An ``algorithm`` event changes nothing here."""
    address = event.address or ""
    current = backends.get(address)
    kind = event.kind
    if kind in ("backend_added", "backend_updated") and event.backend is not None:
        if current is None:
            backends[address] = BackendView(backend=event.backend)
        else:
            backends[address] = msgspec.structs.replace(current, backend=event.backend)
    elif kind == "backend_removed":
        backends.pop(address, None)
    elif kind == "health" and current is not None and event.health is not None:
        backends[address] = msgspec.structs.replace(current, health=event.health)
    elif kind == "ejection" and current is not None:
        backends[address] = msgspec.structs.replace(current, ejection=event.ejection)


def apply_settings_event(
    pools: dict[str, PoolSetting], routes: RouteTableSetting | None, event: Event
) -> RouteTableSetting | None:
    """Apply a pool or route-table change to ``pools`` (by name); returns the route table in force."""
    kind = event.kind
    if kind == "pool_set" and event.pool is not None:
        pools[event.pool.name] = event.pool
    elif kind == "pool_removed" and event.name is not None:
        pools.pop(event.name, None)
    elif kind == "routes" and event.routes is not None:
        return event.routes
    return routes


class Mirror:
    """The whole state as last seen: backends, algorithm and version (-1 before the first Snapshot)."""

    def __init__(self) -> None:
        self.backends: dict[str, BackendView] = {}
        self.algorithm = AlgorithmSetting()
        self.pools: dict[str, PoolSetting] = {}
        self.routes: RouteTableSetting | None = None
        self.version = -1

    def apply(self, item: Snapshot | Event) -> None:
        if isinstance(item, Snapshot):
            self.backends = dict(item.backends)
            self.algorithm = item.algorithm
            self.pools = dict(item.pools)
            self.routes = item.routes
        else:
            apply_event(self.backends, item)
            if item.kind == "algorithm" and item.algorithm is not None:
                self.algorithm = item.algorithm
            self.routes = apply_settings_event(self.pools, self.routes, item)
        self.version = item.version
