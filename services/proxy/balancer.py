"""The seam between the data plane and the choice of backend.

The protocol classes only ask a :class:`Balancer` for an upstream, which counts as in flight from
that moment, and report when that request (HTTP) or connection (TCP) finishes. They know nothing
of Redis, policies or the store: the implementation behind this interface does (see the
load-balancing policies).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import msgspec

from shared.addresses import parse_address
from shared.config import Config


class Upstream(msgspec.Struct, frozen=True, gc=False):
    """A backend the proxy can connect to. ``address`` is its key in the store.

    ``gc=False``: the balancer keeps one per backend (100,000 in a large view) and, holding only
    plain values, it cannot be part of a cycle: never tracked by the cyclic garbage collector."""

    address: str
    host: str
    port: int

    @classmethod
    def from_address(cls, address: str) -> Upstream:
        hp = parse_address(address)
        return cls(address, hp.host, hp.port)


class Outcome(NamedTuple):
    """How one attempt against an upstream ended (for passive health and latency-aware policies).

    A NamedTuple: one is made per request on the hot path, and tuples are the cheapest immutable record.
    """

    ok: bool  # False: connect failure, reset, timeout, or (HTTP) a 5xx response
    # Seconds. HTTP: the whole attempt (from its start, connect included, to the end of the response),
    # only for a response that completed; TCP: the time to connect. None otherwise.
    latency: float | None = None
    status: int | None = None  # HTTP status when a response arrived
    connect_failed: bool = False


class Balancer(Protocol):
    hash_key: str  # where the affinity key comes from: "client_ip", "header:NAME" or "cookie:NAME"

    def pick(self, key: str, exclude: Collection[str] = ()) -> Upstream | None:
        """An upstream for a request whose affinity key is ``key`` (client IP, header or cookie
        value), avoiding the addresses in ``exclude`` (already tried). None: nothing usable.

        The request/connection begins there: the upstream returned counts toward its in-flight
        at once, until :meth:`finished` (one call per request, not a pick and then a start)."""
        ...

    def finished(self, upstream: Upstream, outcome: Outcome) -> None:
        """The request/connection an upstream was picked for is over."""
        ...


@dataclass
class StaticRoundRobin:
    """Round robin over the configured backends, all considered usable. The simplest Balancer."""

    upstreams: list[Upstream]
    hash_key: str = "client_ip"
    inflight: dict[str, int] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def from_config(cls, config: Config) -> StaticRoundRobin:
        return cls([Upstream.from_address(b.address) for b in config.backends], config.balancing.hash_key)

    def pick(self, key: str, exclude: Collection[str] = ()) -> Upstream | None:
        n = len(self.upstreams)
        for _ in range(n):
            upstream = self.upstreams[next(self._counter) % n]
            address = upstream.address
            if address not in exclude:
                self.inflight[address] = self.inflight.get(address, 0) + 1
                return upstream
        return None

    def started(self, upstream: Upstream) -> None:
        """One more request to ``upstream`` without a pick (tests and tools)."""
        self.inflight[upstream.address] = self.inflight.get(upstream.address, 0) + 1

    def finished(self, upstream: Upstream, outcome: Outcome) -> None:
        self.inflight[upstream.address] -= 1
