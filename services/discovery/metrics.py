"""Prometheus metrics of the discovery service, served on ``metrics.discovery_listen_address``.

The reconciler and the sources stay unaware of metrics: the leader counts its writes and failed
reconciles, and the source's ``publish`` callback is wrapped; a Collector reads the counters and
the leader's state at scrape time.

- ``gobalancer_discovery_changes_total{origin,change}``: backends added/updated/removed by this replica
- ``gobalancer_discovery_reconcile_errors_total{origin}``: store calls of a reconcile that failed
  (Redis unreachable, fenced)
- ``gobalancer_discovery_source_up{origin}``: 1 once the source listed its truth and while it runs
- ``gobalancer_discovery_source_publishes_total``, ``..._last_publish_timestamp_seconds``,
  ``gobalancer_discovery_desired_backends``
- ``gobalancer_discovery_leader``: 1 while this replica holds the discovery lease
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.discovery.leader import Leader
from services.discovery.seeding import DesiredSettings
from services.discovery.sources import Publish
from shared.models import Backend

P = "gobalancer_discovery_"


class DiscoveryMetrics(Collector):
    def __init__(
        self,
        origin: str,
        *,
        leader: Leader,
        source_running: Callable[[], bool],
    ) -> None:
        self.origin = origin
        self.leader = leader
        self._source_running = source_running
        self.publishes = 0
        self.last_publish = 0.0
        self.desired = 0

    # -- hooks -------------------------------------------------------------------------------

    def wrap_publish(self, publish: Publish) -> Publish:
        def published(backends: Mapping[str, Backend], settings: DesiredSettings | None = None) -> object:
            self.publishes += 1
            self.last_publish = time.time()
            self.desired = len(backends)
            return publish(backends, settings)

        return published

    # -- Collector ---------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        origin = [self.origin]
        changes = CounterMetricFamily(
            P + "changes", "Backends added/updated/removed in the store by this replica.", labels=["origin", "change"]
        )
        writes = self.leader.writes
        for change, n in (("added", writes.added), ("updated", writes.updated), ("removed", writes.removed)):
            changes.add_metric([self.origin, change], n)
        yield changes
        errors = CounterMetricFamily(P + "reconcile_errors", "Failed store calls of reconciles.", labels=["origin"])
        errors.add_metric(origin, self.leader.errors)
        yield errors
        up = GaugeMetricFamily(P + "source_up", "1 once the source listed, while it runs.", labels=["origin"])
        up.add_metric(origin, int(self.publishes > 0 and self._source_running()))
        yield up
        yield CounterMetricFamily(P + "source_publishes", "Desired sets published by the source.", value=self.publishes)
        yield GaugeMetricFamily(
            P + "source_last_publish_timestamp_seconds", "When the source last published.", value=self.last_publish
        )
        yield GaugeMetricFamily(P + "desired_backends", "Backends in the source's last set.", value=self.desired)
        yield GaugeMetricFamily(P + "leader", "1 while this replica leads.", value=int(self.leader.is_leader.is_set()))


def registry_for(metrics: DiscoveryMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry
