"""Request and response bodies of the admin API (msgspec Structs; requests reject unknown fields)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Annotated

import msgspec

from shared.addresses import normalize_address
from shared.config import Algorithm, OutlierConfig, ProbeConfig, RouteConfig
from shared.config.routing import DEFAULT_POOL, check_name
from shared.models import (
    AdminState,
    AlgorithmSetting,
    BackendOverride,
    BackendView,
    HealthStatus,
    Origin,
    PoolSetting,
    RouteTableSetting,
)

Weight = Annotated[int, msgspec.Meta(ge=1, le=10000, description="relative share of traffic, 1-10000")]
Address = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=300,
        description="host:port - a DNS name, an IPv4 address or an [IPv6] address; port 1-65535",
        examples=["10.0.0.5:8080", "[::1]:9000"],
    ),
]
HASH_KEY = re.compile(r"client_ip|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^\s;=]+")


def checked_address(value: str) -> str:
    """``value`` in its canonical spelling; otherwise a ValueError naming the `address` field."""
    try:
        return normalize_address(value)
    except ValueError as exc:
        raise ValueError(f"address: {exc}") from None


class RequestBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every request body (decoded strictly by ``guards.StrictBody``)."""


class BackendCreate(RequestBody):
    """`POST /backends`."""

    address: Address
    weight: Weight = 1
    state: AdminState = "enabled"

    def __post_init__(self) -> None:
        self.address = checked_address(self.address)


class BackendReplace(RequestBody):
    """`PUT /backends/{address}`: the original API's update (the weight).

    ``address`` may be repeated in the body, as clients of the original API do; it must match the path.
    """

    weight: Weight
    address: Address | None = None

    def __post_init__(self) -> None:
        if self.address is not None:
            self.address = checked_address(self.address)


class BackendPatch(RequestBody):
    """`PATCH /backends/{address}`: any subset of the changeable fields (at least one)."""

    weight: Weight | None = None
    state: AdminState | None = None

    def __post_init__(self) -> None:
        if self.weight is None and self.state is None:
            raise ValueError("body: give at least one of weight, state")


class AlgorithmUpdate(RequestBody):
    """`PUT /algorithm`: the policy every proxy uses, with its options."""

    algorithm: Algorithm
    hash_key: str | None = None
    hash_epsilon: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] | None = None
    slow_start_sec: Annotated[float, msgspec.Meta(ge=0.0, le=3600.0)] | None = None

    def __post_init__(self) -> None:
        if self.hash_key is not None and not HASH_KEY.fullmatch(self.hash_key):
            raise ValueError(f"hash_key: must be 'client_ip', 'header:NAME' or 'cookie:NAME', got {self.hash_key!r}")

    def to_setting(self) -> AlgorithmSetting:
        return AlgorithmSetting(
            name=self.algorithm,
            hash_key=self.hash_key,
            hash_epsilon=self.hash_epsilon,
            slow_start_sec=self.slow_start_sec,
        )


# -- responses --------------------------------------------------------------------------------


class BackendOut(msgspec.Struct, kw_only=True):
    address: str
    weight: int
    alive: bool
    conn_count: int
    health: HealthStatus
    health_reason: str
    health_changed_at: float
    state: AdminState
    origin: Origin
    ejected: bool
    ejected_until: float | None
    created_at: float
    updated_at: float
    # An operator's values for fields a discovery source owns (kept until DELETE /backends/{address}/override),
    # and what the source says for them; null when nothing is overridden.
    override: BackendOverride | None = None
    discovered: BackendOverride | None = None
    pool: str = "default"  # the pool it serves (an address serves one pool at a time)

    @classmethod
    def of_views(
        cls, views: Iterable[BackendView], inflight: Mapping[str, int], *, start_healthy: bool
    ) -> list[BackendOut]:
        """Each view with its global in-flight count (``inflight`` by address), judged at one instant."""
        at = time.time()
        return [cls.of(v, conn_count=inflight.get(v.address, 0), start_healthy=start_healthy, at=at) for v in views]

    @classmethod
    def of(cls, view: BackendView, *, conn_count: int, start_healthy: bool, at: float) -> BackendOut:
        b = view.backend
        ejected = view.ejected(at)
        return cls(
            address=b.address,
            weight=b.weight,
            alive=view.usable(start_healthy=start_healthy, at=at),
            conn_count=conn_count,
            health=view.health.status,
            health_reason=view.health.reason,
            health_changed_at=view.health.changed_at,
            state=b.state,
            origin=b.origin,
            pool=b.pool,
            ejected=ejected,
            ejected_until=view.ejection.until if ejected and view.ejection is not None else None,
            created_at=b.created_at,
            updated_at=b.updated_at,
            override=b.override,
            discovered=b.discovered,
        )


class StateChange(msgspec.Struct, kw_only=True):
    """The answer to drain/enable/disable: the backend and how many requests are still in flight."""

    address: str
    state: AdminState
    changed: bool
    in_flight: int
    backend: BackendOut


class AlgorithmOut(msgspec.Struct, kw_only=True):
    algorithm: Algorithm
    hash_key: str | None
    hash_epsilon: float | None
    slow_start_sec: float | None
    updated_at: float
    changed: bool | None = None

    @classmethod
    def of(cls, setting: AlgorithmSetting, changed: bool | None = None) -> AlgorithmOut:
        return cls(
            algorithm=setting.name,
            hash_key=setting.hash_key,
            hash_epsilon=setting.hash_epsilon,
            slow_start_sec=setting.slow_start_sec,
            updated_at=setting.updated_at,
            changed=changed,
        )


class SnapshotOut(msgspec.Struct, kw_only=True):
    """The `snapshot` event of `GET /events`: the whole state (``routes`` null: the configuration's table is
    in force, see `GET /routes`)."""

    version: int
    backends: list[BackendOut]
    algorithm: AlgorithmOut
    pools: list[PoolOut] = msgspec.field(default_factory=list)
    routes: RouteTableSetting | None = None


class ReplicaOut(msgspec.Struct, kw_only=True):
    id: str
    service: str
    host: str
    pid: int
    listen: str
    started_at: float
    heartbeat_at: float
    heartbeat_age_sec: float
    inflight: dict[str, int]
    # Requests finished since the replica started, by "address|class" (2xx..5xx, error): monotonic per replica.
    totals: dict[str, int] = msgspec.field(default_factory=dict)


class HealthOut(msgspec.Struct, kw_only=True):
    status: str  # "ok" | "unavailable"
    redis: str  # "up" | "down"
    reason: str = ""
    version: int | None = None


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem document (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = None
    errors: list[dict[str, str]] | None = None


# -- pools and routes (`/pools`, `/routes`) ----------------------------------------------------------

HashEpsilon = Annotated[float, msgspec.Meta(gt=0.0, le=10.0)]
SlowStart = Annotated[float, msgspec.Meta(ge=0.0, le=3600.0)]
PoolName = Annotated[str, msgspec.Meta(min_length=1, max_length=63, examples=["api"])]


class PoolAlgorithm(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A pool's balancing algorithm and its options (null: the configuration's value)."""

    name: Algorithm
    hash_key: str | None = None
    hash_epsilon: HashEpsilon | None = None
    slow_start_sec: SlowStart | None = None

    def __post_init__(self) -> None:
        if self.hash_key is not None and not HASH_KEY.fullmatch(self.hash_key):
            raise ValueError(f"hash_key: must be 'client_ip', 'header:NAME' or 'cookie:NAME', got {self.hash_key!r}")

    def to_setting(self) -> AlgorithmSetting:
        return AlgorithmSetting(
            name=self.name, hash_key=self.hash_key, hash_epsilon=self.hash_epsilon, slow_start_sec=self.slow_start_sec
        )

    @classmethod
    def of(cls, setting: AlgorithmSetting) -> PoolAlgorithm:
        return cls(
            name=setting.name,
            hash_key=setting.hash_key,
            hash_epsilon=setting.hash_epsilon,
            slow_start_sec=setting.slow_start_sec,
        )


class PoolReplace(RequestBody):
    """`PUT /pools/{name}`: every setting of the pool (an absent one is the configuration's value).
    ``name`` may be repeated in the body; it must match the path."""

    name: PoolName | None = None
    algorithm: PoolAlgorithm = msgspec.field(default_factory=lambda: PoolAlgorithm(name="round_robin"))
    outlier: OutlierConfig | None = None
    health_check: ProbeConfig | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            _check_pool_name(self.name)

    def to_setting(self, name: str) -> PoolSetting:
        return PoolSetting(
            name=name, algorithm=self.algorithm.to_setting(), outlier=self.outlier, health_check=self.health_check
        )


class PoolCreate(PoolReplace):
    """`POST /pools`: a new pool (its backends are added with `POST /pools/{name}/backends`)."""

    name: PoolName


class PoolPatch(RequestBody):
    """`PATCH /pools/{name}`: the settings given replace the pool's (null: back to the configuration's value;
    ``algorithm`` is replaced whole)."""

    algorithm: PoolAlgorithm | msgspec.UnsetType = msgspec.UNSET
    outlier: OutlierConfig | msgspec.UnsetType | None = msgspec.UNSET
    health_check: ProbeConfig | msgspec.UnsetType | None = msgspec.UNSET

    def __post_init__(self) -> None:
        if self.algorithm is msgspec.UNSET and self.outlier is msgspec.UNSET and self.health_check is msgspec.UNSET:
            raise ValueError("body: give at least one of algorithm, outlier, health_check")

    def apply(self, current: PoolSetting) -> PoolSetting:
        changes: dict[str, object] = {}
        if not isinstance(self.algorithm, msgspec.UnsetType):
            changes["algorithm"] = self.algorithm.to_setting()
        if self.outlier is not msgspec.UNSET:
            changes["outlier"] = self.outlier
        if self.health_check is not msgspec.UNSET:
            changes["health_check"] = self.health_check
        return msgspec.structs.replace(current, **changes)


def _check_pool_name(name: str) -> None:
    try:
        check_name("pool", name)
    except ValueError as exc:
        raise ValueError(f"name: {exc}") from None


class PoolOut(msgspec.Struct, kw_only=True):
    """A pool: its settings (null: the configuration's), how many backends it has and how many take traffic."""

    name: str
    algorithm: PoolAlgorithm
    outlier: OutlierConfig | None
    health_check: ProbeConfig | None
    backends: int
    usable: int
    created_at: float
    updated_at: float
    changed: bool | None = None

    @classmethod
    def of(
        cls,
        name: str,
        setting: PoolSetting | None,
        algorithm: AlgorithmSetting,
        counts: tuple[int, int],
        changed: bool | None = None,
    ) -> PoolOut:
        """``algorithm``: the default pool's (``NS:algorithm``); a named pool's is its record's (a pool that
        backends name before its record was written shows the defaults)."""
        if name != DEFAULT_POOL:
            algorithm = setting.algorithm if setting is not None else AlgorithmSetting()
        updated = max(algorithm.updated_at, setting.updated_at if setting is not None else 0.0)
        return cls(
            name=name,
            algorithm=PoolAlgorithm.of(algorithm),
            outlier=setting.outlier if setting is not None else None,
            health_check=setting.health_check if setting is not None else None,
            backends=counts[0],
            usable=counts[1],
            created_at=setting.created_at if setting is not None else 0.0,
            updated_at=updated,
            changed=changed,
        )


class PoolsOut(msgspec.Struct, kw_only=True):
    pools: list[PoolOut]


class RouteIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A rule of the route table as sent; checked as `RouteConfig` is (see `PUT /routes`)."""

    name: Annotated[str, msgspec.Meta(max_length=63)]
    pool: Annotated[str, msgspec.Meta(max_length=63)]
    host: Annotated[str, msgspec.Meta(max_length=255)] = ""
    path_prefix: Annotated[str, msgspec.Meta(max_length=2048)] = "/"
    methods: Annotated[list[str], msgspec.Meta(max_length=16)] = msgspec.field(default_factory=list)
    headers: Annotated[dict[str, str], msgspec.Meta(max_length=16)] = msgspec.field(default_factory=dict)
    strip_prefix: bool = False
    rewrite_host: Annotated[str, msgspec.Meta(max_length=300)] = ""


class RoutesReplace(RequestBody):
    """`PUT /routes`: the whole ordered table and the pool of requests no route matches ("" = 404)."""

    routes: Annotated[list[RouteIn], msgspec.Meta(max_length=10000)]
    default_pool: str = ""


class RoutesOut(msgspec.Struct, kw_only=True):
    """The route table in force: the store's (``source`` "store"), else the configuration's ("config")."""

    routes: list[RouteConfig]
    default_pool: str
    source: str  # "store" | "config"
    updated_at: float
    changed: bool | None = None
