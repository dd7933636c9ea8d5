"""The seam between the data plane and the choice of backend.

The protocol classes only ask a :class:`Balancer` for an upstream, which counts as in flight from
that moment, and report when that request (HTTP) or connection (TCP) finishes. They know nothing
of Redis, policies or the store: the implementation behind this interface does (see the
load-balancing policies).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Protocol

import msgspec

from shared.addresses import parse_address
from shared.config import Config, PoolConfig


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


class Balancer(Protocol):
    hash_key: str  # where the affinity key comes from: "client_ip", "header:NAME" or "cookie:NAME"

    def pick(self, key: str, exclude: Collection[str] = ()) -> Upstream | None:
        """An upstream for a request whose affinity key is ``key`` (client IP, header or cookie
        value), avoiding the addresses in ``exclude`` (already tried). None: nothing usable.

        The request/connection begins there: the upstream returned counts toward its in-flight
        at once, until :meth:`finished` (one call per request, not a pick and then a start)."""
        ...

    def finished(self, upstream: Upstream, ok: bool = True, latency: float | None = None) -> None:
        """The request/connection an upstream was picked for is over.

        ``ok`` False: a connect failure, reset, timeout, or (HTTP) a 5xx response (passive health).
        ``latency``: seconds — HTTP: the whole attempt (connect included) of a response that completed;
        TCP: the time to connect; None otherwise (for latency-aware policies). Plain arguments, not a
        record: this runs once per request."""
        ...


class StaticRoundRobin:
    """Round robin over the configured backends, all considered usable. The simplest Balancer."""

    def __init__(self, upstreams: list[Upstream], hash_key: str = "client_ip") -> None:
        self.upstreams = upstreams
        self.hash_key = hash_key
        self.inflight: dict[str, int] = dict.fromkeys((u.address for u in upstreams), 0)
        self._next = itertools.cycle(upstreams).__next__

    @classmethod
    def from_config(cls, config: Config) -> StaticRoundRobin:
        return cls([Upstream.from_address(b.address) for b in config.backends], config.balancing.hash_key)

    @classmethod
    def from_pool(cls, pool: PoolConfig) -> StaticRoundRobin:
        return cls([Upstream.from_address(b.address) for b in pool.backends], pool.balancing.hash_key)

    def pick(self, key: str, exclude: Collection[str] = ()) -> Upstream | None:
        try:
            upstream = self._next()
        except StopIteration:  # no backends (a try costs nothing until it raises)
            return None
        if exclude:
            for _ in range(len(self.upstreams)):
                if upstream.address not in exclude:
                    break
                upstream = self._next()
            else:
                return None
        self.inflight[upstream.address] += 1
        return upstream

    def started(self, upstream: Upstream) -> None:
        """One more request to ``upstream`` without a pick (tests and tools)."""
        self.inflight[upstream.address] = self.inflight.get(upstream.address, 0) + 1

    def finished(self, upstream: Upstream, ok: bool = True, latency: float | None = None) -> None:
        self.inflight[upstream.address] -= 1
