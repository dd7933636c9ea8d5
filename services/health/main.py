"""Entry point of the health service: ``python -m services.health --config FILE``.

Every replica heartbeats (``shared.replica.Replica``) and holds its share of the backends' shards
(one lease each); it probes the backends of its shards and writes their health transitions (see
``service.py``).
"""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from services.health.service import HealthService
from shared.aio import cancel_and_wait
from shared.config import Config
from shared.gc_tuning import tune_gc
from shared.metrics import metrics_server
from shared.replica import Replica
from shared.service import open_store, require_redis_url, run_service

SERVICE = "health"


async def run(config: Config, stop: asyncio.Event) -> None:
    require_redis_url(SERVICE, config)
    tune_gc()  # (everything is imported by now)
    store = open_store(config)
    replica = Replica(store, SERVICE, ttl=config.redis.replica_ttl_sec, heartbeat=config.redis.heartbeat_sec)
    heartbeat = asyncio.create_task(replica.run())
    try:
        # The checker's series live in the default registry (services/health/metrics.py).
        async with metrics_server(config.metrics.health_listen_address, REGISTRY) as bound:
            replica.info.metrics = bound
            pools = {name: pool.health_check for name, pool in config.pools.items()}
            await HealthService(store, config.health_check, replica.id, pools=pools).run(stop)
    finally:
        await cancel_and_wait([heartbeat])
        await replica.deregister()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    return run_service(SERVICE, run, argv)
