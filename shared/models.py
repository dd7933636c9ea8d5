"""The records kept in the store and the change events published for them."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

from shared.config import ALGORITHMS, DEFAULT_POOL, Algorithm, OutlierConfig, ProbeConfig, RouteConfig
from shared.config.limits import RateLimitsDocument

Origin = Literal["static", "api", "docker", "kubernetes"]
AdminState = Literal["enabled", "draining", "disabled"]
HealthStatus = Literal["unknown", "up", "down"]
EventKind = Literal[
    "backend_added",
    "backend_updated",
    "backend_removed",
    "health",
    "ejection",
    "algorithm",
    "pool_set",
    "pool_removed",
    "routes",
    "rate_limits",
]

__all__ = [
    "ALGORITHMS",
    "AdminState",
    "Algorithm",
    "AlgorithmSetting",
    "Backend",
    "BackendOverride",
    "BackendView",
    "Ejection",
    "Event",
    "EventKind",
    "Health",
    "HealthStatus",
    "Origin",
    "PoolSetting",
    "ReplicaInfo",
    "RouteTableSetting",
    "Snapshot",
    "now",
]


def now() -> float:
    return time.time()


class BackendOverride(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Values of the fields an operator may change on a backend a discovery source owns (None: not set)."""

    weight: Annotated[int, msgspec.Meta(ge=1, le=10000)] | None = None
    state: AdminState | None = None


class Backend(msgspec.Struct, kw_only=True, omit_defaults=False):
    """A backend's configuration as stored: what an operator or a discovery source decided.

    On a backend of a discovery origin, ``override`` holds the fields an operator changed (their values
    are also the record's own, the values in force) and ``discovered`` what the source says for those
    fields; the source keeps the operator's values until the override is cleared
    (``Store.clear_override``), which puts the source's back. See ``shared/store/keys.py``.
    """

    address: str
    weight: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 1
    origin: Origin = "api"
    # The pool the backend serves (an address belongs to one pool at a time; records written before
    # pools existed have no "pool" and are the default pool's).
    pool: str = DEFAULT_POOL
    state: AdminState = "enabled"
    created_at: float = 0.0
    updated_at: float = 0.0
    override: BackendOverride | None = None
    discovered: BackendOverride | None = None

    def source_value(self, field: str) -> object:
        """What the discovery source last wrote for ``field`` (the value in force unless overridden)."""
        if self.override is not None and self.discovered is not None and getattr(self.override, field) is not None:
            return getattr(self.discovered, field)
        return getattr(self, field)


class Health(msgspec.Struct, kw_only=True):
    """The active health checker's verdict; only transitions are written."""

    status: HealthStatus = "unknown"
    changed_at: float = 0.0
    reason: str = ""


class Ejection(msgspec.Struct, kw_only=True):
    """A passive (outlier) ejection published by a proxy replica."""

    replica: str
    until: float
    count: int = 1
    reason: str = ""


class BackendView(msgspec.Struct, kw_only=True, gc=False):
    """A backend with everything known about it: configuration, health and ejection.

    ``gc=False``: never tracked by the cyclic garbage collector (it holds only other structs of
    plain values, so it cannot be part of a cycle); a proxy holds one per backend, up to 100,000."""

    backend: Backend
    health: Health = msgspec.field(default_factory=Health)
    ejection: Ejection | None = None

    @property
    def address(self) -> str:
        return self.backend.address

    def ejected(self, at: float | None = None) -> bool:
        return self.ejection is not None and self.ejection.until > (now() if at is None else at)

    def usable(self, *, start_healthy: bool = False, at: float | None = None) -> bool:
        """May new traffic go to this backend?"""
        if self.backend.state != "enabled" or self.ejected(at):
            return False
        if self.health.status == "unknown":
            return start_healthy
        return self.health.status == "up"


class AlgorithmSetting(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Algorithm = "round_robin"
    hash_key: str | None = None
    hash_epsilon: float | None = None
    slow_start_sec: float | None = None
    updated_at: float = 0.0


class PoolSetting(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A named pool's settings as stored (``NS:pools``: name -> this). The default pool's algorithm
    stays where it always was (``NS:algorithm``); the default pool has a record here only for its
    health check and outlier settings, if an operator set them. ``None``: the configuration's value
    (the pool's section of ``pools:``, else the top-level setting)."""

    name: str
    algorithm: AlgorithmSetting = msgspec.field(default_factory=AlgorithmSetting)
    outlier: OutlierConfig | None = None
    health_check: ProbeConfig | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


class RouteTableSetting(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The route table as stored (``NS:routes``), replaced whole. Absent: the configuration's routes."""

    routes: list[RouteConfig] = msgspec.field(default_factory=list)
    default_pool: str = ""
    updated_at: float = 0.0


class Event(msgspec.Struct, kw_only=True):
    """A change, as published on the events channel after the write it describes."""

    version: int
    kind: EventKind
    at: float = 0.0
    address: str | None = None
    backend: Backend | None = None
    health: Health | None = None
    ejection: Ejection | None = None
    algorithm: AlgorithmSetting | None = None
    name: str | None = None  # pool_set / pool_removed: the pool
    pool: PoolSetting | None = None  # pool_set: its new settings
    routes: RouteTableSetting | None = None  # routes: the new table
    # kind "rate_limits": the store's document as written (null: removed, the config file's rules apply).
    rate_limits: RateLimitsDocument | None = None


class Snapshot(msgspec.Struct, kw_only=True):
    """Everything a proxy needs, read in one atomic step."""

    version: int
    backends: dict[str, BackendView]
    algorithm: AlgorithmSetting
    pools: dict[str, PoolSetting] = msgspec.field(default_factory=dict)
    routes: RouteTableSetting | None = None


class ReplicaInfo(msgspec.Struct, kw_only=True):
    """A live replica of a service, as registered by its heartbeat."""

    id: str
    service: str
    started_at: float
    heartbeat_at: float
    host: str = ""
    pid: int = 0
    listen: str = ""
    metrics: str = ""  # where this replica serves GET /metrics ("" = not served)
    inflight: dict[str, int] = msgspec.field(default_factory=dict)
    # Requests finished since the replica started, by "address|class" (class: 1xx..5xx, "error" for no
    # response, "tcp" for a relayed TCP connection).
    totals: dict[str, int] = msgspec.field(default_factory=dict)
