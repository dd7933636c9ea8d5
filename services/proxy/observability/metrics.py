"""The proxy's ``/metrics``: a Collector that folds the data plane's plain counters into Prometheus
families at scrape time (nothing on the request path touches prometheus_client).

Series (every one per proxy process, i.e. per worker: each worker serves its own port):

- ``gobalancer_proxy_backend_requests_total{backend,class}``: attempts finished against a backend by
  status class (``1xx``..``5xx``, ``error``: no response — connect failure, reset, timeout, abort;
  TCP mode: ``tcp``, a connection relayed to its end)
- ``gobalancer_proxy_backend_inflight{backend}``: requests (TCP: connections) in flight
- ``gobalancer_proxy_backend_connect_errors_total``, ``..._retries_total`` (retries after a failure on
  that backend), ``..._ejections_total`` (passive ejections decided by this process)
- ``gobalancer_proxy_backend_request_duration_seconds`` (attempt start to response complete) and
  ``..._upstream_ttfb_seconds`` (attempt start to the backend's response head) histograms
- ``gobalancer_proxy_backend_received_bytes_total`` / ``..._sent_bytes_total``: client bytes of the
  requests answered through the backend / bytes sent back to those clients
- ``gobalancer_proxy_route_requests_total{pool,route,class}`` and
  ``gobalancer_proxy_route_request_duration_seconds{pool,route}``: with routes, per route
- ``gobalancer_proxy_rate_limited_total{rule}``, ``..._rate_limit_degraded{rule}``, ``..._rate_limit_keys{rule}``,
  ``..._rate_limit_sync_failures_total``: with rate limits
- ``gobalancer_proxy_generated_responses_total{code}``: responses the proxy made itself (4xx/5xx)
- ``gobalancer_proxy_{connections,requests}_total``, ``gobalancer_proxy_idle_timeouts_total``
- with a store: ``gobalancer_proxy_store_sync_lag_seconds`` (event written -> applied here),
  ``gobalancer_proxy_redis_up``, ``gobalancer_proxy_view_version``
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.proxy.limits.gate import Gate
from services.proxy.limits.pools import LimitedBalancer
from services.proxy.limits.sync import RateLimitSync
from services.proxy.stats import CLASS_NAMES, LATENCY_BUCKETS, Histogram, Stats

P = "gobalancer_proxy_"
_BOUNDS = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]


def histogram_family(name: str, doc: str, labels: list[str], series: Iterable[tuple[list[str], Histogram]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series:
        cumulative, buckets = 0, []
        for bound, count in zip(_BOUNDS, hist.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric(values, buckets, hist.sum)
    return family


class ProxyCollector(Collector):
    """Reads ``stats()`` (the Context's Stats, None before the server started) and the balancer."""

    def __init__(
        self,
        stats: Callable[[], Stats | None],
        balancer: Any,
        info: Mapping[str, str],
        gate: Callable[[], Gate | None] = lambda: None,
        sync: Callable[[], RateLimitSync | None] = lambda: None,
        limited: Sequence[LimitedBalancer] = (),
    ) -> None:
        """``gate`` and ``sync``: the rate limits' in force, read at each scrape (they change with
        ``PUT /rate-limits``); ``limited``: the pools with connection limits."""
        self._limited = list(limited)
        self._stats = stats
        self._balancer = balancer
        self._info = dict(info)
        self._gate = gate
        self._sync = sync

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(P + "info", "This proxy process (value 1).", labels=list(self._info))
        info.add_metric(list(self._info.values()), 1)
        yield info
        stats = self._stats()
        if stats is not None:
            yield from self._data_plane(stats)
        yield from self._balancer_metrics()
        gate = self._gate()
        if gate is not None:
            yield from self._rate_limits(gate)
        if self._limited:
            yield from self._connection_limits()

    def _connection_limits(self) -> Iterable[Metric]:
        """Per pool with connection limits: 503s by reason, requests waiting for a slot, requests in flight."""
        rejected = CounterMetricFamily(
            P + "pool_rejected",
            "Requests answered 503 by a pool's connection limits, by reason.",
            labels=["pool", "reason"],
        )
        pending = GaugeMetricFamily(P + "pool_pending", "Requests waiting for a connection slot.", labels=["pool"])
        inflight = GaugeMetricFamily(
            P + "pool_inflight", "Requests in flight to a limited pool from this replica.", labels=["pool"]
        )
        for pool in self._limited:
            for reason, n in pool.rejected.items():
                rejected.add_metric([pool.name, reason], n)
            pending.add_metric([pool.name], pool.pending)
            inflight.add_metric([pool.name], pool.local)
        yield from (rejected, pending, inflight)

    def _rate_limits(self, gate: Gate) -> Iterable[Metric]:
        """Per rule: requests refused (429), whether the limiter counts on its fallback share (Redis away,
        or just back), and the keys it keeps; the syncs with Redis that failed."""
        limited = CounterMetricFamily(
            P + "rate_limited", "Requests refused (429) by a rate-limit rule.", labels=["rule"]
        )
        degraded = GaugeMetricFamily(
            P + "rate_limit_degraded",
            "1 while a rule counts on this replica's share alone (Redis unreachable at the last sync).",
            labels=["rule"],
        )
        keys = GaugeMetricFamily(P + "rate_limit_keys", "Keys a rule's limiter keeps (bounded).", labels=["rule"])
        for limiter in gate.limiters:
            limited.add_metric([limiter.name], limiter.denied)
            degraded.add_metric([limiter.name], int(limiter.degraded))
            keys.add_metric([limiter.name], len(limiter))
        yield from (limited, degraded, keys)
        sync = self._sync()
        if sync is not None:
            yield CounterMetricFamily(
                P + "rate_limit_sync_failures", "Rate-limit syncs with Redis that failed.", value=sync.failed
            )

    def _data_plane(self, stats: Stats) -> Iterable[Metric]:
        yield CounterMetricFamily(P + "connections", "Client connections accepted.", value=stats.connections)
        yield CounterMetricFamily(P + "requests", "HTTP requests whose head was accepted.", value=stats.requests)
        yield CounterMetricFamily(
            P + "idle_timeouts", "Body transfers aborted because one side stalled.", value=stats.idle_timeouts
        )
        generated = CounterMetricFamily(
            P + "generated_responses", "Responses the proxy made itself, by status code.", labels=["code"]
        )
        for code, n in sorted(stats.errors.items()):
            generated.add_metric([str(code)], n)
        yield generated
        backends = sorted(stats.backends.items())
        requests = CounterMetricFamily(
            P + "backend_requests", "Attempts finished against a backend, by status class.", labels=["backend", "class"]
        )
        conn_errors = CounterMetricFamily(P + "backend_connect_errors", "Failed connects.", labels=["backend"])
        retries = CounterMetricFamily(P + "backend_retries", "Retries after a failure here.", labels=["backend"])
        received = CounterMetricFamily(
            P + "backend_received_bytes", "Client request bytes answered through the backend.", labels=["backend"]
        )
        sent = CounterMetricFamily(
            P + "backend_sent_bytes", "Response bytes sent to clients from the backend.", labels=["backend"]
        )
        for address, b in backends:
            for name, n in zip(CLASS_NAMES, b.classes_total(), strict=True):
                if n:
                    requests.add_metric([address, name], n)
            conn_errors.add_metric([address], b.connect_errors)
            retries.add_metric([address], b.retries)
            received.add_metric([address], b.request_bytes)
            sent.add_metric([address], b.response_bytes)
        yield from (requests, conn_errors, retries, received, sent)
        yield histogram_family(
            P + "backend_request_duration_seconds",
            "Attempt start to response complete (or failure), per backend.",
            ["backend"],
            (([a], b.duration_total()) for a, b in backends),
        )
        yield histogram_family(
            P + "backend_upstream_ttfb_seconds",
            "Attempt start to the backend's response head, per backend.",
            ["backend"],
            (([a], b.ttfb_total()) for a, b in backends),
        )
        yield from self._routes(stats)

    def _routes(self, stats: Stats) -> Iterable[Metric]:
        """Per route (with routes configured): requests by status class and their durations, labelled with
        the route's pool. Bounded: routes come from the configuration, never from request values."""
        routes = sorted(stats.routes.items())
        requests = CounterMetricFamily(
            P + "route_requests",
            "Requests a route sent to its pool that got a response, by status class.",
            labels=["pool", "route", "class"],
        )
        for (pool, route), r in routes:
            for name, n in zip(CLASS_NAMES, r.classes_total(), strict=True):
                if n:
                    requests.add_metric([pool, route, name], n)
        yield requests
        yield histogram_family(
            P + "route_request_duration_seconds",
            "Attempt start to response complete, per route and pool.",
            ["pool", "route"],
            (([pool, route], r.duration_total()) for (pool, route), r in routes),
        )

    def _balancer_metrics(self) -> Iterable[Metric]:
        balancer = self._balancer
        inflight: Mapping[str, int] = getattr(balancer, "inflight", None) or {}
        gauge = GaugeMetricFamily(P + "backend_inflight", "Requests (TCP: connections) in flight.", labels=["backend"])
        for address, n in sorted(inflight.items()):
            gauge.add_metric([address], n)
        yield gauge
        ejections: Mapping[str, int] | None = getattr(balancer, "ejections", None)
        if ejections is None:
            return  # no store: nothing more to say
        family = CounterMetricFamily(
            P + "backend_ejections", "Passive ejections decided by this process.", labels=["backend"]
        )
        for address, n in sorted(ejections.items()):
            family.add_metric([address], n)
        yield family
        lag: Histogram = balancer.sync_lag
        yield histogram_family(
            P + "store_sync_lag_seconds", "Store event written -> applied to this proxy's view.", [], [([], lag)]
        )
        yield GaugeMetricFamily(P + "redis_up", "1 while Redis answers.", value=int(balancer.redis_up))
        yield GaugeMetricFamily(
            P + "view_version", "Store version of this proxy's view (-1: none).", value=balancer.view.version
        )


def proxy_registry(
    stats: Callable[[], Stats | None],
    balancer: Any,
    info: Mapping[str, str],
    gate: Callable[[], Gate | None] = lambda: None,
    sync: Callable[[], RateLimitSync | None] = lambda: None,
    limited: Sequence[LimitedBalancer] = (),
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(stats, balancer, info, gate, sync, limited))
    return registry
