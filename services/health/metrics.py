"""Prometheus metrics of the health checker, in the default registry (``main.py`` serves it on
``metrics.health_listen_address``; nothing here opens a port).

Per-backend series are removed when a backend leaves the store, so the label set stays bounded by
the number of live backends.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

PROBE_DURATION = Histogram(
    "gobalancer_health_probe_duration_seconds",
    "Duration of active health probes (connect + response), per backend.",
    ["backend"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PROBE_RESULTS = Counter(
    "gobalancer_health_probe_results_total",
    "Active health probes by result (pass/fail), per backend.",
    ["backend", "result"],
)
TRANSITIONS = Counter(
    "gobalancer_health_transitions_total",
    "Health status changes decided by the checker, per backend and new status.",
    ["backend", "to"],
)
BACKENDS = Gauge("gobalancer_health_backends", "Backends this replica is probing.")
LEADER = Gauge("gobalancer_health_leader", "1 while this replica holds health shards and probes them.")
SHARDS = Gauge("gobalancer_health_shards", "Shards of the backends (health leases) this replica probes.")


class BackendMetrics:
    """The per-backend series, looked up once (``labels()`` takes a lock and a dict lookup per call)."""

    __slots__ = ("duration", "failed", "passed")

    def __init__(self, backend: str) -> None:
        self.duration = PROBE_DURATION.labels(backend)
        self.passed = PROBE_RESULTS.labels(backend, "pass")
        self.failed = PROBE_RESULTS.labels(backend, "fail")

    def probe(self, ok: bool, seconds: float) -> None:
        self.duration.observe(seconds)
        (self.passed if ok else self.failed).inc()


def observe_transition(backend: str, to: str) -> None:
    TRANSITIONS.labels(backend, to).inc()


def forget_backend(backend: str) -> None:
    """Drop the series of a backend that is no longer probed."""
    for metric, labels in (
        (PROBE_DURATION, (backend,)),
        (PROBE_RESULTS, (backend, "pass")),
        (PROBE_RESULTS, (backend, "fail")),
        (TRANSITIONS, (backend, "up")),
        (TRANSITIONS, (backend, "down")),
    ):
        with contextlib.suppress(KeyError):
            metric.remove(*labels)
