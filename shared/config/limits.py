"""The schema of rate-limit rules (``rate_limits:`` in the config, ``GET/PUT /rate-limits`` in the admin API).

A rule::

    name: api-per-client
    applies_to: all              # or "pool:NAME" / "route:NAME" (once routing exists)
    key: client_ip               # or "header:NAME", "cookie:NAME", "rule" (one bucket shared by all requests)
    rate: 100/s                  # COUNT/s, COUNT/min or COUNT/h
    burst: 0                     # extra requests allowed within one window on top of the rate
    fail_closed: false           # while Redis is unreachable: false = each replica admits its share; true = deny

Errors are ``ValueError("field: problem")`` raised from ``__post_init__``, the convention
``shared.config`` turns into ``rate_limits.rules[i].field: problem``. The config schema
(``shared.config.schema``) imports it; the proxy's limiters (``services.proxy.limits``) read it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Annotated

import msgspec

# The units a rate may be given in, and their window in seconds.
UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_RATE = re.compile(r"([0-9]+)/([a-z]+)")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# A header name is an RFC 9110 token; a cookie name anything but separators and spaces.
_KEY = re.compile(r"client_ip|rule|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^\s;=,]+")
_APPLIES = re.compile(r"all|(pool|route):\s*([A-Za-z0-9_.:-]+)")

MaxKeys = Annotated[int, msgspec.Meta(ge=1000, le=100_000_000)]


def parse_rate(text: str, field: str = "rate") -> tuple[int, int]:
    """``"100/s"`` -> ``(100, 1)``: requests per window of that many seconds. Strict: a positive integer count,
    one of the units s, min, h (or second, minute, hour); no spaces, no fractions, no other units."""
    if not isinstance(text, str):
        raise ValueError(f"{field}: expected a string like '100/s', '6000/min' or '10/h', got {text!r}")
    m = _RATE.fullmatch(text)
    if m is None:
        raise ValueError(f"{field}: expected COUNT/UNIT like '100/s', '6000/min' or '10/h', got {text!r}")
    count, unit = int(m.group(1)), m.group(2)
    if unit not in UNITS:
        raise ValueError(f"{field}: unknown unit {unit!r} in {text!r} (expected one of: s, min, h)")
    if count < 1:
        raise ValueError(f"{field}: the count must be at least 1, got {text!r}")
    if count > 1_000_000_000:
        raise ValueError(f"{field}: the count must be at most 1000000000, got {text!r}")
    return count, UNITS[unit]


class _Struct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RateLimitRule(_Struct):
    # A unique name: in metrics, in the RateLimit headers and in the Redis keys (letters, digits, _ . -).
    name: str
    # Requests per window: "100/s", "6000/min", "10/h".
    rate: str
    # "all", "pool:NAME" or "route:NAME".
    applies_to: str = "all"
    # What is counted: "client_ip", "header:NAME", "cookie:NAME" (a request without one counts by its
    # client IP) or "rule" (one bucket for every request the rule applies to).
    key: str = "client_ip"
    # Extra requests a key may make within one window on top of the rate (0: none).
    burst: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)] = 0
    # While Redis is unreachable: false = each replica admits its share (rate / live replicas at the last
    # sync); true = every request the rule applies to is refused (429).
    fail_closed: bool = False

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name: 1-64 letters, digits, '_', '.' or '-', got {self.name!r}")
        if not _APPLIES.fullmatch(self.applies_to):
            raise ValueError(f"applies_to: must be 'all', 'pool:NAME' or 'route:NAME', got {self.applies_to!r}")
        self.applies_to = re.sub(r":\s+", ":", self.applies_to)
        if not _KEY.fullmatch(self.key):
            raise ValueError(f"key: must be 'client_ip', 'header:NAME', 'cookie:NAME' or 'rule', got {self.key!r}")
        if self.key.startswith("header:"):
            self.key = self.key.lower()  # header names are case-insensitive; matched lower-cased
        parse_rate(self.rate)

    @property
    def limit(self) -> int:
        """Requests per window (the rate's count)."""
        return parse_rate(self.rate)[0]

    @property
    def window(self) -> int:
        """The window in seconds."""
        return parse_rate(self.rate)[1]

    @property
    def quota(self) -> int:
        """Requests admitted per sliding window: the rate plus the burst."""
        return self.limit + self.burst

    @property
    def header(self) -> bytes | None:
        """The request header the key is read from (lower case), if any."""
        return self.key[7:].encode("latin-1") if self.key.startswith("header:") else None

    @property
    def cookie(self) -> bytes | None:
        """The cookie the key is read from, if any."""
        return self.key[7:].encode("latin-1") if self.key.startswith("cookie:") else None


class RateLimitsConfig(_Struct):
    # The rules; a request is checked against every rule that applies to it, in this order.
    rules: list[RateLimitRule] = msgspec.field(default_factory=list)
    # Keys whose state each replica keeps per rule (least recently used ones are forgotten beyond it: a
    # forgotten key starts again on its fallback share until its next sync). About 400 bytes each.
    max_keys: MaxKeys = 100_000
    # Each replica pushes its counts and reads the global ones every sync_sec (one round trip for all rules).
    # Shorter: closer to the limit across replicas; longer: less work for Redis.
    sync_sec: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] = 0.1

    def __post_init__(self) -> None:
        check_unique_names(self.rules)
        if not math.isfinite(self.sync_sec):
            raise ValueError("sync_sec: must be a finite number of seconds")


class RateLimitsDocument(_Struct):
    """The rules as the store holds them (``NS:rate_limits``, written by ``PUT /rate-limits``): while there is
    one, every proxy applies these rules instead of the config file's ``rate_limits.rules`` (``max_keys`` and
    ``sync_sec`` stay the file's). ``rules`` comes first: the store's script compares the encoded rules."""

    rules: list[RateLimitRule] = msgspec.field(default_factory=list)
    # When the document was written (seconds since the epoch).
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        check_unique_names(self.rules)


def check_unique_names(rules: list[RateLimitRule], where: str = "rules: rules[{i}]") -> None:
    """ValueError(``where`` formatted with the index: "duplicate name ...") for a rule named twice."""
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ValueError(f"{where.format(i=i)}: duplicate name {rule.name!r}")
        seen.add(rule.name)


def check_rule_targets(
    rules: list[RateLimitRule], pools: Collection[str], routes: Collection[str], field: str = "rules"
) -> None:
    """ValueError("FIELD[i].applies_to: ...") for a rule whose ``applies_to`` names a pool or route not among
    ``pools`` / ``routes`` (the config's, or with the store's, in the admin)."""
    for i, rule in enumerate(rules):
        kind, _, name = rule.applies_to.partition(":")
        have = pools if kind == "pool" else routes
        if kind != "all" and name not in have:
            known = ", ".join(sorted(have)) or "none"
            raise ValueError(f"{field}[{i}].applies_to: {kind} {name!r} does not exist ({kind}s: {known})")


# -- connection limits (circuit breaking) ---------------------------------------------------------

MaxConnections = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
MaxPending = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
QueueTimeout = Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)]


def check_connection_limits(max_connections: int, max_pending: int, queue_timeout_sec: float) -> None:
    """A pool's ``max_connections``, ``max_pending`` and ``queue_timeout_sec`` together (``ValueError("field:
    problem")``): a queue needs a limit to wait for."""
    if not math.isfinite(queue_timeout_sec):
        raise ValueError("queue_timeout_sec: must be a finite number of seconds")
    if max_pending and not max_connections:
        raise ValueError("max_pending: needs max_connections (requests wait for a connection slot)")
