"""Entry point of the discovery service (placeholder: connects, heartbeats and stops cleanly)."""

from __future__ import annotations

import asyncio
import contextlib

from shared.config import Config
from shared.replica import Replica
from shared.service import open_store, require_redis_url, run_service

SERVICE = "discovery"


async def run(config: Config, stop: asyncio.Event) -> None:
    require_redis_url(SERVICE, config)
    store = open_store(config)
    replica = Replica(store, SERVICE, ttl=config.redis.replica_ttl_sec, heartbeat=config.redis.heartbeat_sec)
    heartbeat = asyncio.create_task(replica.run())
    try:
        await stop.wait()
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await replica.deregister()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    return run_service(SERVICE, run, argv)
