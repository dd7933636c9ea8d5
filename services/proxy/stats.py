"""Cheap counters of the data plane: plain ints and lists, folded into Prometheus at scrape time.

The hot path never touches a prometheus_client object (they take a lock per update): a request
adds to a few slots of a :class:`BackendStats` (its histograms are fixed bucket arrays indexed with
``bisect``), and ``services.proxy.observability.metrics.ProxyCollector`` reads them when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.proxy.http import fast

# Upper bounds (seconds) of the latency histograms; one more slot counts everything above the last.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Index of a class in BackendStats.classes: 0 for "error" (no response), status // 100 for an HTTP
# status, TCP_RELAYED for a TCP connection relayed to its end (L4 mode: no status).
CLASS_NAMES: tuple[str, ...] = ("error", "1xx", "2xx", "3xx", "4xx", "5xx", "tcp")
TCP_RELAYED = 6
WHOLE_SLOTS = len(LATENCY_BUCKETS) + 1  # latency slots per status class in BackendStats.whole


class TallyPy:
    """A backend's (or route's) fast-path counters: the Python twin of ``_fast.Tally`` (``Tally`` below is
    the one in use). ``counts()[class * WHOLE_SLOTS + bucket]``: responses of a status class whose latency
    fell in a bucket of LATENCY_BUCKETS."""

    __slots__ = ("_counts", "request_bytes", "response_bytes", "sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(CLASS_NAMES) * WHOLE_SLOTS)
        self.sum = 0.0
        self.request_bytes = 0
        self.response_bytes = 0

    def counts(self) -> list[int]:
        return list(self._counts)


def tally_py(
    backend: TallyPy, route: TallyPy | None, status: int, latency: float, request_bytes: int, out: bytes
) -> None:
    """One fast-path response counted: the Python twin of ``_fast.tally`` (``tally`` below is the one in use)."""
    slot = (status // 100 if 100 <= status < 600 else 0) * WHOLE_SLOTS + bisect_left(LATENCY_BUCKETS, latency)
    backend._counts[slot] += 1
    backend.sum += latency
    backend.request_bytes += request_bytes
    backend.response_bytes += len(out)
    if route is not None:
        route._counts[slot] += 1
        route.sum += latency


Tally: Callable[[], TallyPy] = TallyPy
tally: Callable[[Any, Any, int, float, int, bytes], None] = tally_py
if fast.EXTENSION is not None:
    Tally, tally = fast.EXTENSION.Tally, fast.EXTENSION.tally


def status_class(status: int | None) -> str:
    """ "2xx" ... "5xx" for an HTTP status, "error" for none (connect failure, reset, timeout)."""
    return CLASS_NAMES[status // 100] if status and 100 <= status < 600 else "error"


def _sum(a: Histogram, b: Histogram) -> Histogram:
    out = Histogram()
    out.counts = [x + y for x, y in zip(a.counts, b.counts, strict=True)]
    out.sum = a.sum + b.sum
    return out


class Histogram:
    """A fixed-bucket histogram: ``counts[i]`` observations in (bounds[i-1], bounds[i]], last slot +Inf."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value


class BackendStats:
    """What one proxy process counted for one backend (attempts, not client requests: a retried
    request counts once against each backend it tried).

    A response that arrived whole in one read (the fast path) has its time to first byte equal to its
    duration: it is observed once, in ``whole``, and /metrics adds ``whole`` to both histograms at
    scrape time (``duration_total``, ``ttfb_total``) instead of the hot path observing it twice."""

    __slots__ = (
        "classes",
        "connect_errors",
        "duration",
        "retries",
        "ttfb",
        "whole",
    )

    def __init__(self) -> None:
        self.classes = [0] * len(CLASS_NAMES)  # finished attempts by status class
        self.connect_errors = 0
        self.retries = 0  # retries after a failure on this backend
        self.duration = Histogram()  # attempt start -> response complete (or failure)
        self.ttfb = Histogram()  # attempt start -> response head from the backend
        # Responses complete in one read (duration == time to first byte), per status class and latency
        # bucket, and the bytes of every request (both paths): one ``tally`` call per fast response.
        self.whole: Any = Tally()

    # Client bytes (head + body) of requests answered through this backend, and bytes sent to clients
    # for them (kept in ``whole``, where the fast path adds them).
    @property
    def request_bytes(self) -> int:
        return int(self.whole.request_bytes)

    @request_bytes.setter
    def request_bytes(self, value: int) -> None:
        self.whole.request_bytes = value

    @property
    def response_bytes(self) -> int:
        return int(self.whole.response_bytes)

    @response_bytes.setter
    def response_bytes(self, value: int) -> None:
        self.whole.response_bytes = value

    def _whole(self) -> Histogram:
        out = Histogram()
        whole = self.whole.counts()
        out.counts = [sum(whole[i::WHOLE_SLOTS]) for i in range(WHOLE_SLOTS)]
        out.sum = float(self.whole.sum)
        return out

    def classes_total(self) -> list[int]:
        """Finished attempts by status class, both paths."""
        whole = self.whole.counts()
        return [n + sum(whole[c * WHOLE_SLOTS : (c + 1) * WHOLE_SLOTS]) for c, n in enumerate(self.classes)]

    def duration_total(self) -> Histogram:
        return _sum(self.duration, self._whole())

    def ttfb_total(self) -> Histogram:
        return _sum(self.ttfb, self._whole())

    def finished(self, status: int | None, duration: float, ttfb: float | None) -> None:
        self.classes[status // 100 if status and 100 <= status < 600 else 0] += 1
        self.duration.observe(duration)
        if ttfb is not None:
            self.ttfb.observe(ttfb)


class Labelled(Protocol):
    label: tuple[str, str]  # (pool, route): a route (services.proxy.routes.Route)


@dataclass(slots=True)
class Stats:
    connections: int = 0  # client connections accepted
    requests: int = 0  # HTTP requests whose head was accepted
    retries: int = 0
    connect_failures: int = 0
    pool_misses: int = 0  # attempts that opened a new connection
    tunnels: int = 0
    idle_timeouts: int = 0  # body transfers aborted because one side stalled
    errors: Counter[int] = field(default_factory=Counter)  # status -> responses the proxy made itself
    backends: dict[str, BackendStats] = field(default_factory=dict)
    # With routes: per route, the requests it sent to its pool (same histograms as a backend's). Keyed by
    # the route's (pool, name) label: routes come from the configuration, never from request values.
    routes: dict[tuple[str, str], BackendStats] = field(default_factory=dict)

    def route(self, route: Labelled) -> BackendStats:
        r = self.routes.get(route.label)
        if r is None:
            r = self.routes[route.label] = BackendStats()
        return r

    def keep_routes(self, labels: set[tuple[str, str]]) -> None:
        """Forget the counters of routes no longer in the table (a table from the store replaced the one
        they were in): the route series stay bounded by the tables in force, whatever the churn."""
        for label in [label for label in self.routes if label not in labels]:
            del self.routes[label]

    def error(self, status: int) -> None:
        self.errors[status] += 1

    @property
    def pool_hits(self) -> int:
        """Attempts that reused a pooled connection, derived when read: finished attempts (with metrics
        on) less those that opened a connection."""
        finished = sum(sum(b.classes_total()) for b in self.backends.values())
        return max(0, finished - self.pool_misses)

    def backend(self, address: str) -> BackendStats:
        b = self.backends.get(address)
        if b is None:
            b = self.backends[address] = BackendStats()
        return b

    def forget(self, address: str) -> None:
        """A backend left (and has nothing in flight here): its series go (no growth with churn)."""
        self.backends.pop(address, None)


RATE_LIMIT_KEY = "rate_limit:"  # a replica total "rate_limit:RULE|limited": requests the rule refused (not a backend)


class RuleCounter(Protocol):
    """A rate-limit rule's limiter as the totals read it."""

    @property
    def name(self) -> str: ...

    @property
    def denied(self) -> int: ...


class StatsTotals:
    """The replica's request totals (``shared.replica.TotalsSource``) in a proxy: attempts per backend
    and status class, read from the data plane's own counters (the ones /metrics shows) as the
    difference since the last push. One count per request serves both; with metrics off the hot path
    counts nothing, so there are no totals either. In TCP mode a relayed connection counts as "tcp",
    a failed connect as "error"."""

    def __init__(self, stats: Stats, limiters: Callable[[], Iterable[RuleCounter]] | None = None) -> None:
        self.stats = stats
        # Each backend's classes as of the last take, with the BackendStats they were read from: one
        # forgotten (Stats.forget) and counted again from zero is not mistaken for the old one.
        self._taken: dict[str, tuple[BackendStats, list[int]]] = {}
        # The rate-limit rules in force (their ``denied`` counts, published as ``rate_limit:RULE|limited``
        # for the dashboard), and each one's count as of the last take, with the limiter it was read from.
        self.limiters = limiters
        self._limited: dict[str, tuple[RuleCounter, int]] = {}

    def _before(self, address: str, b: BackendStats) -> list[int]:
        taken = self._taken.get(address)
        return taken[1] if taken is not None and taken[0] is b else _NONE

    def _rules(self) -> list[RuleCounter]:
        return list(self.limiters()) if self.limiters is not None else []

    def _limited_deltas(self, limiters: list[RuleCounter]) -> dict[str, int]:
        deltas: dict[str, int] = {}
        for limiter in limiters:
            taken = self._limited.get(limiter.name)
            before = taken[1] if taken is not None and taken[0] is limiter else 0  # (a new limiter: from 0)
            if limiter.denied != before:
                deltas[limiter.name] = limiter.denied - before
        return deltas

    def has_totals(self) -> bool:
        return any(b.classes_total() != self._before(a, b) for a, b in self.stats.backends.items()) or bool(
            self._limited_deltas(self._rules())
        )

    def take_totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        limiters = self._rules()
        for name, delta in self._limited_deltas(limiters).items():
            totals[f"{RATE_LIMIT_KEY}{name}|limited"] = delta
        self._limited = {limiter.name: (limiter, limiter.denied) for limiter in limiters}
        backends = self.stats.backends
        if len(self._taken) > len(backends):  # some were forgotten
            self._taken = {a: t for a, t in self._taken.items() if backends.get(a) is t[0]}
        for address, b in backends.items():
            now = b.classes_total()
            before = self._before(address, b)
            if now == before:
                continue
            self._taken[address] = (b, now)
            for name, n, m in zip(CLASS_NAMES, now, before, strict=True):
                if n != m:
                    totals[f"{address}|{name}"] = n - m
        return totals


_NONE = [0] * len(CLASS_NAMES)


class RetryBudget:
    """Retries allowed as a share of requests: each request deposits ``ratio`` tokens, a retry takes one.

    A small reserve lets a quiet proxy retry at all; the cap keeps a long calm spell from funding a
    retry storm later. Deposits are not made per request: a withdrawal credits every request counted
    since the previous one (``requests``: the data plane's request counter), which, capped, is the
    same sum.
    """

    __slots__ = ("_seen", "cap", "ratio", "tokens")

    def __init__(self, ratio: float, reserve: float = 10.0, cap: float = 100.0) -> None:
        self.ratio = ratio
        self.tokens = reserve
        self.cap = max(cap, reserve)
        self._seen = 0

    def credit(self, requests: int) -> None:
        tokens = self.tokens + (requests - self._seen) * self.ratio
        self.tokens = tokens if tokens < self.cap else self.cap
        self._seen = requests

    def withdraw(self, requests: int) -> bool:
        self.credit(requests)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
