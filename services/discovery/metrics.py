"""Prometheus metrics of the discovery service, served on ``metrics.discovery_listen_address``.

The reconciler and the sources stay unaware of metrics: the store handed to the leader is
instrumented (its three reconcile calls are wrapped on that one instance) and the source's
``publish`` callback is wrapped; a Collector reads the counters and the leader's state at scrape time.

- ``gobalancer_discovery_changes_total{origin,change}``: backends added/updated/removed by this replica
- ``gobalancer_discovery_reconcile_errors_total{origin}``: store calls of a reconcile that failed
  (Redis unreachable, fenced)
- ``gobalancer_discovery_source_up{origin}``: 1 once the source listed its truth and while it runs
- ``gobalancer_discovery_source_publishes_total``, ``..._last_publish_timestamp_seconds``,
  ``gobalancer_discovery_desired_backends``
- ``gobalancer_discovery_leader``: 1 while this replica holds the discovery lease
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.models import Backend
from shared.store import BackendNotFound, OriginMismatch, Store

P = "gobalancer_discovery_"
T = TypeVar("T")
Publish = Callable[[Mapping[str, Backend]], object]
_EXPECTED = (BackendNotFound, OriginMismatch)  # answers the reconciler handles, not errors


class DiscoveryMetrics(Collector):
    def __init__(self, origin: str, *, leading: Callable[[], bool], source_running: Callable[[], bool]) -> None:
        self.origin = origin
        self._leading = leading
        self._source_running = source_running
        self.changes = {"added": 0, "updated": 0, "removed": 0}
        self.errors = 0
        self.publishes = 0
        self.last_publish = 0.0
        self.desired = 0

    # -- hooks -------------------------------------------------------------------------------

    def _counted(self, call: Callable[..., Awaitable[T]], on_result: Callable[[T], None]) -> Callable[..., Any]:
        @functools.wraps(call)
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                result = await call(*args, **kwargs)
            except _EXPECTED:
                raise
            except Exception:
                self.errors += 1
                raise
            on_result(result)
            return result

        return wrapper

    def instrument(self, store: Store) -> Store:
        """Count the writes the reconciler makes through ``store`` (this instance only)."""

        def upserted(result: Any) -> None:
            if result.outcome == "backend_added":
                self.changes["added"] += 1
            elif result.outcome == "backend_updated":
                self.changes["updated"] += 1

        def removed(_: Any) -> None:
            self.changes["removed"] += 1

        setattr(store, "upsert_backend", self._counted(store.upsert_backend, upserted))  # noqa: B010
        setattr(store, "remove_backend", self._counted(store.remove_backend, removed))  # noqa: B010
        setattr(store, "list_backends", self._counted(store.list_backends, lambda _: None))  # noqa: B010
        return store

    def wrap_publish(
        self, publish: Callable[[Mapping[str, Backend]], object]
    ) -> Callable[[Mapping[str, Backend]], object]:
        def published(backends: Mapping[str, Backend]) -> object:
            self.publishes += 1
            self.last_publish = time.time()
            self.desired = len(backends)
            return publish(backends)

        return published

    # -- Collector ---------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        origin = [self.origin]
        changes = CounterMetricFamily(
            P + "changes", "Backends added/updated/removed in the store by this replica.", labels=["origin", "change"]
        )
        for change, n in self.changes.items():
            changes.add_metric([self.origin, change], n)
        yield changes
        errors = CounterMetricFamily(P + "reconcile_errors", "Failed store calls of reconciles.", labels=["origin"])
        errors.add_metric(origin, self.errors)
        yield errors
        up = GaugeMetricFamily(P + "source_up", "1 once the source listed, while it runs.", labels=["origin"])
        up.add_metric(origin, int(self.publishes > 0 and self._source_running()))
        yield up
        yield CounterMetricFamily(P + "source_publishes", "Desired sets published by the source.", value=self.publishes)
        yield GaugeMetricFamily(
            P + "source_last_publish_timestamp_seconds", "When the source last published.", value=self.last_publish
        )
        yield GaugeMetricFamily(P + "desired_backends", "Backends in the source's last set.", value=self.desired)
        yield GaugeMetricFamily(P + "leader", "1 while this replica leads.", value=int(self._leading()))


def registry_for(metrics: DiscoveryMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry
