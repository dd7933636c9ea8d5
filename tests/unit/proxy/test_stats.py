"""The data plane's counters and their Prometheus exposition (folded at scrape time)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.proxy.balancer import StaticRoundRobin, Upstream
from services.proxy.limits.limiter import Limiter
from services.proxy.observability.metrics import proxy_registry
from services.proxy.stats import LATENCY_BUCKETS, RATE_LIMIT_KEY, Histogram, Stats, StatsTotals, status_class


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_status_class() -> None:
    assert [status_class(s) for s in (None, 0, 101, 200, 302, 404, 503, 700)] == [
        "error",
        "error",
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "error",
    ]


def test_histogram_buckets_are_upper_inclusive() -> None:
    h = Histogram()
    for v in (0.0005, 0.0006, 0.001, 100.0):
        h.observe(v)
    assert h.counts[0] == 1 and h.counts[1] == 2 and h.counts[len(LATENCY_BUCKETS)] == 1
    assert abs(h.sum - 100.0021) < 1e-9


def test_collector_folds_stats() -> None:
    stats = Stats()
    b = stats.backend("10.0.0.1:80")
    b.finished(200, 0.003, 0.002)
    b.finished(200, 0.02, 0.01)
    b.finished(503, 0.5, 0.4)
    b.finished(None, 1.0, None)
    b.request_bytes, b.response_bytes, b.retries, b.connect_errors = 100, 2000, 1, 1
    stats.error(502)
    stats.error(502)
    balancer = StaticRoundRobin([Upstream.from_address("10.0.0.1:80")])
    balancer.started(balancer.upstreams[0])
    got = samples(generate_latest(proxy_registry(lambda: stats, balancer, {"replica": "r1"})))
    lb = (("backend", "10.0.0.1:80"),)
    assert got[("gobalancer_proxy_backend_requests_total", (("backend", "10.0.0.1:80"), ("class", "2xx")))] == 2
    assert got[("gobalancer_proxy_backend_requests_total", (("backend", "10.0.0.1:80"), ("class", "5xx")))] == 1
    assert got[("gobalancer_proxy_backend_requests_total", (("backend", "10.0.0.1:80"), ("class", "error")))] == 1
    assert got[("gobalancer_proxy_backend_inflight", lb)] == 1
    assert got[("gobalancer_proxy_backend_received_bytes_total", lb)] == 100
    assert got[("gobalancer_proxy_backend_sent_bytes_total", lb)] == 2000
    assert got[("gobalancer_proxy_backend_retries_total", lb)] == 1
    assert got[("gobalancer_proxy_generated_responses_total", (("code", "502"),))] == 2
    assert got[("gobalancer_proxy_backend_request_duration_seconds_count", lb)] == 4
    assert got[("gobalancer_proxy_backend_request_duration_seconds_bucket", (*lb, ("le", "0.005")))] == 1
    assert got[("gobalancer_proxy_backend_request_duration_seconds_bucket", (*lb, ("le", "+Inf")))] == 4
    assert got[("gobalancer_proxy_backend_upstream_ttfb_seconds_count", lb)] == 3
    assert got[("gobalancer_proxy_info", (("replica", "r1"),))] == 1


def test_request_totals_are_what_the_counters_gained_since_the_last_take() -> None:
    """The replica's request totals come from the same per-backend class counts as /metrics."""
    stats = Stats()
    totals = StatsTotals(stats)
    assert not totals.has_totals() and totals.take_totals() == {}
    for status in (200, 200, 503, None):
        stats.backend("a:1").finished(status, 0.01, None)
    stats.backend("b:1")  # seen, nothing finished yet
    assert totals.has_totals()
    assert totals.take_totals() == {"a:1|2xx": 2, "a:1|5xx": 1, "a:1|error": 1}
    assert not totals.has_totals() and totals.take_totals() == {}
    stats.backend("a:1").finished(200, 0.01, None)
    stats.backend("b:1").finished(404, 0.01, None)
    assert totals.take_totals() == {"a:1|2xx": 1, "b:1|4xx": 1}


def test_request_totals_carry_each_rate_limit_rules_refusals() -> None:
    """A rule's refusals go out with the totals as ``rate_limit:RULE|limited`` deltas (the dashboard shows
    them); a limiter swapped in under the same name (a new table) counts from zero again."""
    stats = Stats()
    limiters = [Limiter("per-ip", 2, 60.0)]
    totals = StatsTotals(stats, lambda: limiters)
    assert not totals.has_totals()
    refused = [limiters[0].admit("10.0.0.1", 1.0) > 0 for _ in range(5)]
    assert refused == [False, False, True, True, True]
    assert totals.has_totals()
    assert totals.take_totals() == {f"{RATE_LIMIT_KEY}per-ip|limited": 3}
    assert not totals.has_totals() and totals.take_totals() == {}
    limiters = [Limiter("per-ip", 1, 60.0)]  # (the new table's limiter, counting from 0)
    limiters[0].admit("10.0.0.1", 1.0)
    limiters[0].admit("10.0.0.1", 1.0)
    assert totals.take_totals() == {f"{RATE_LIMIT_KEY}per-ip|limited": 1}
