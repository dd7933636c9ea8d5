"""Entry point of the discovery service: one source, the shared reconciler, a lease.

``python -m services.discovery --config FILE``. Every replica runs the configured source (so a
standby always holds a current desired set); the replica holding the ``discovery`` lease
reconciles the store to it. The static source needs the config file's path to watch it: ``main``
reads it with the same argument parser as ``run_service`` (``--config``, else ``$GOBALANCER_CONFIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from services.discovery.desired import Desired
from services.discovery.leader import Leader
from services.discovery.metrics import DiscoveryMetrics, registry_for
from services.discovery.sources import make_source
from shared.aio import cancel_and_wait
from shared.config import Config
from shared.logs import get_logger
from shared.metrics import metrics_server
from shared.replica import Replica
from shared.service import open_store, parse_args, require_redis_url, run_service

SERVICE = "discovery"
log = get_logger("discovery")


async def run(config: Config, stop: asyncio.Event, config_path: str | None = None) -> None:
    require_redis_url(SERVICE, config)
    try:
        source = make_source(config, config_path)
    except ValueError as exc:
        print(f"gobalancer {SERVICE}: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    store = open_store(config)
    replica = Replica(store, SERVICE, ttl=config.redis.replica_ttl_sec, heartbeat=config.redis.heartbeat_sec)
    desired = Desired()
    metrics = DiscoveryMetrics(
        source.origin,
        leading=lambda: leader.is_leader.is_set(),
        source_running=lambda: not source_task.done(),
    )
    leader = Leader(
        metrics.instrument(store),
        desired,
        origin=source.origin,
        fields=source.fields,
        holder=replica.id,
        ttl=float(config.discovery.lease_ttl_sec),
    )
    log.info("discovery starting", source=config.discovery.type, replica=replica.id)
    source_task = asyncio.create_task(source.run(metrics.wrap_publish(desired.publish)), name="source")
    tasks = [asyncio.create_task(replica.run(), name="heartbeat"), source_task]
    exits = contextlib.AsyncExitStack()
    try:
        served = metrics_server(config.metrics.discovery_listen_address, registry_for(metrics))
        replica.info.metrics = await exits.enter_async_context(served)
        leading = asyncio.create_task(leader.run(stop), name="leader")
        # The leader returns when `stop` is set; a source or heartbeat that dies is a bug: stop too.
        done, _ = await asyncio.wait([leading, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not leading and task.exception() is not None:
                log.error("discovery task failed", task=task.get_name(), error=repr(task.exception()))
        if not leading.done():
            stop.set()
            await leading
    finally:
        await exits.aclose()
        await cancel_and_wait(tasks)  # re-cancels: 3.11 can lose a cancel inside redis-py
        try:
            await replica.deregister()
        except Exception as exc:  # the heartbeat expires by itself; a failed goodbye must not fail the exit
            log.warning("cannot deregister the replica", error=str(exc) or repr(exc))
        await store.close()


def main(argv: list[str] | None = None) -> int:
    path = parse_args(SERVICE, argv).config

    async def run_with_path(config: Config, stop: asyncio.Event) -> None:
        await run(config, stop, path)

    return run_service(SERVICE, run_with_path, argv)
