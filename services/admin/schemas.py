"""Request and response bodies of the admin API (msgspec Structs; requests reject unknown fields)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Annotated

import msgspec

from shared.addresses import normalize_address
from shared.config import Algorithm
from shared.models import AdminState, AlgorithmSetting, BackendOverride, BackendView, HealthStatus, Origin

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
    """The `snapshot` event of `GET /events`: the whole state."""

    version: int
    backends: list[BackendOut]
    algorithm: AlgorithmOut


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
