"""Entry point of the discovery service: one source, the shared reconciler, a lease.

``python -m services.discovery --config FILE``. Every replica runs the configured source (so a
standby always holds a current desired set); the replica holding the ``discovery`` lease
reconciles the store to it. The static source needs the config file's path to watch it:
``run_service`` exports the path it was given as ``$GOBALANCER_CONFIG``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from services.discovery.desired import Desired
from services.discovery.leader import Leader
from services.discovery.metrics import DiscoveryMetrics, registry_for
from services.discovery.seeding import Seeder
from services.discovery.sources import make_source
from shared.aio import cancel_and_wait
from shared.config import Config
from shared.gc_tuning import tune_gc
from shared.logs import get_logger
from shared.metrics import metrics_server
from shared.replica import Replica
from shared.service import open_store, require_redis_url, run_service

SERVICE = "discovery"
log = get_logger("discovery")


async def run(config: Config, stop: asyncio.Event, config_path: str | None = None) -> None:
    """``config_path``: the file the static source watches; by default the one ``run_service`` was given."""
    require_redis_url(SERVICE, config)
    tune_gc()  # (everything is imported by now)
    if config_path is None:
        config_path = os.environ.get("GOBALANCER_CONFIG")
    try:
        source = make_source(config, config_path)
    except ValueError as exc:
        print(f"gobalancer {SERVICE}: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    store = open_store(config)
    replica = Replica(store, SERVICE, ttl=config.redis.replica_ttl_sec, heartbeat=config.redis.heartbeat_sec)
    desired = Desired()
    seeder = Seeder(config)
    leader = Leader(
        store,
        desired,
        origin=source.origin,
        fields=source.fields,
        holder=replica.id,
        ttl=float(config.discovery.lease_ttl_sec),
        seeder=seeder,
    )
    metrics = DiscoveryMetrics(source.origin, leader=leader, source_running=lambda: not source_task.done())
    log.info("discovery starting", source=config.discovery.type, replica=replica.id)
    source_task = asyncio.create_task(source.run(metrics.wrap_publish(desired.publish)), name="source")
    tasks = [asyncio.create_task(replica.run(), name="heartbeat"), source_task]
    try:
        async with metrics_server(config.metrics.discovery_listen_address, registry_for(metrics)) as bound:
            replica.info.metrics = bound
            leading = asyncio.create_task(leader.run(stop), name="leader")
            # The leader returns when `stop` is set; a source or heartbeat that dies is a bug: stop too.
            done, _ = await asyncio.wait([leading, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    log.error("discovery task failed", task=task.get_name(), error=repr(task.exception()))
            if not leading.done():
                stop.set()
            await leading  # re-raises a leader's failure: the process must not exit 0 with discovery dead
    finally:
        await cancel_and_wait(tasks)  # re-cancels: 3.11 can lose a cancel inside redis-py
        await replica.deregister()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    return run_service(SERVICE, run, argv)
