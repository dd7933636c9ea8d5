"""Prometheus metrics of the admin service: its own requests, plus gauges read from the store per scrape."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shared.models import ALGORITHMS, BackendView, ReplicaInfo, Snapshot

HEALTH_STATES = ("unknown", "up", "down")
ADMIN_STATES = ("enabled", "draining", "disabled")


class RequestTotals(Collector):
    """Request totals the proxies push (``ReplicaInfo.totals``), exported as counters at each scrape.

    Per replica the totals are monotonic. The cluster-wide sum drops when a replica goes away (its
    totals expire with it); ``rate()`` treats that as a counter reset, as it does for a restart.
    The names differ from the proxies' own per-process counters so a sum over all targets counts once.
    """

    def __init__(self) -> None:
        self.by_backend: dict[tuple[str, str], int] = {}
        self.by_replica: dict[tuple[str, str, str], int] = {}

    def update(self, replicas: list[ReplicaInfo]) -> None:
        by_backend: dict[tuple[str, str], int] = {}
        by_replica: dict[tuple[str, str, str], int] = {}
        for replica in replicas:
            for key, total in replica.totals.items():
                if key.startswith("rate_limit:"):  # (a rule's refusals, not a backend's requests)
                    continue
                address, _, klass = key.rpartition("|")
                if not address:
                    continue
                by_backend[(address, klass)] = by_backend.get((address, klass), 0) + total
                by_replica[(replica.id, address, klass)] = total
        self.by_backend, self.by_replica = by_backend, by_replica

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        cluster = CounterMetricFamily(
            "gobalancer_cluster_backend_requests",
            "Requests finished per backend and status class, summed over live replicas",
            labels=["backend", "class"],
        )
        for (address, klass), total in sorted(self.by_backend.items()):
            cluster.add_metric([address, klass], total)
        per_replica = CounterMetricFamily(
            "gobalancer_cluster_replica_requests",
            "Requests finished per replica, backend and status class, as pushed by each live replica",
            labels=["replica", "backend", "class"],
        )
        for (replica_id, address, klass), total in sorted(self.by_replica.items()):
            per_replica.add_metric([replica_id, address, klass], total)
        return [cluster, per_replica]


class AdminMetrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gobalancer_admin_requests", "Admin API requests handled", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "gobalancer_admin_request_duration_seconds",
            "Admin API request duration (until the response head is sent)",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.event_streams = Gauge("gobalancer_admin_event_streams", "Open /events streams", registry=r)
        self.redis_up = Gauge("gobalancer_admin_redis_up", "1 when the last store read succeeded", registry=r)
        self.version = Gauge("gobalancer_state_version", "The version of the shared state", registry=r)
        self.backends = Gauge(
            "gobalancer_backends", "Backends by health status and admin state", ["health", "state"], registry=r
        )
        self.usable = Gauge("gobalancer_backends_usable", "Backends that may receive new traffic", registry=r)
        self.inflight = Gauge(
            "gobalancer_backend_inflight",
            "In-flight requests per backend, summed over live replicas",
            ["address"],
            registry=r,
        )
        self.replicas = Gauge("gobalancer_replicas", "Live replicas by service", ["service"], registry=r)
        self.algorithm = Gauge("gobalancer_algorithm", "1 for the algorithm in use", ["algorithm"], registry=r)
        self.totals = RequestTotals()
        r.register(self.totals)

    def observe_state(self, snap: Snapshot, replicas: list[ReplicaInfo], *, start_healthy: bool) -> None:
        """Set the store gauges and request totals from one consistent read. Synchronous: scrapes cannot
        interleave. Not called while Redis is down: the totals are then kept as they were."""
        self.redis_up.set(1)
        self.version.set(snap.version)
        counts = {(h, s): 0 for h in HEALTH_STATES for s in ADMIN_STATES}
        at = time.time()
        usable = 0
        views: list[BackendView] = list(snap.backends.values())
        for view in views:
            counts[(view.health.status, view.backend.state)] += 1
            usable += view.usable(start_healthy=start_healthy, at=at)
        for (health, state), n in counts.items():
            self.backends.labels(health=health, state=state).set(n)
        self.usable.set(usable)
        inflight: collections.Counter[str] = collections.Counter()  # summed over live replicas
        for replica in replicas:
            inflight.update(replica.inflight)
        self.inflight.clear()
        for view in views:
            self.inflight.labels(address=view.address).set(inflight[view.address])
        self.replicas.clear()
        for service, n in collections.Counter(r.service for r in replicas).items():
            self.replicas.labels(service=service).set(n)
        for name in ALGORITHMS:
            self.algorithm.labels(algorithm=name).set(1 if name == snap.algorithm.name else 0)
        self.totals.update(replicas)

    def store_down(self) -> None:
        self.redis_up.set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _labels(scope: Scope) -> tuple[str, str]:
    method = str(scope.get("method", ""))
    return (method if method in _METHODS else "other"), str(scope.get("path_template") or "unmatched")


def count_responses(metrics: AdminMetrics) -> Any:
    """A ``before_send`` hook: it sees every response, including 404/405 from the router."""

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            method, route = _labels(scope)
            metrics.requests.labels(method=method, route=route, status=str(message["status"])).inc()

    return before_send


def time_requests(metrics: AdminMetrics) -> Any:
    """Middleware timing matched routes until the response head (Litestar runs it only for matched routes)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()

            async def timed_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    method, route = _labels(scope)
                    metrics.latency.labels(method=method, route=route).observe(time.perf_counter() - started)
                await send(message)

            await app(scope, receive, timed_send)

        return wrapped

    return middleware
