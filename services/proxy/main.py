"""Entry point of the proxy service: ``python -m services.proxy --config FILE``.

With ``proxy.workers`` = N > 1 this process starts N-1 more processes running the same config file
and environment (plus ``GOBALANCER_PROXY_WORKERS=1``); each binds its own listener with SO_REUSEPORT
and the kernel spreads connections over them. SIGTERM to this process drains and stops all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

from services.proxy.balancer import Balancer, StaticRoundRobin
from services.proxy.observability.metrics import proxy_registry
from services.proxy.server import Server
from services.proxy.stats import StatsTotals
from services.proxy.store_balancer import open_store_balancer
from shared.addresses import with_port_offset
from shared.config import Config
from shared.gc_tuning import tune_gc
from shared.logs import get_logger
from shared.metrics import metrics_server
from shared.processes import die_with_parent
from shared.service import open_store, run_service

SERVICE = "proxy"
log = get_logger("proxy")


@contextlib.asynccontextmanager
async def make_balancer(config: Config) -> AsyncIterator[Balancer]:
    """The Balancer the data plane asks for backends.

    With a Redis URL: the Redis-coordinated StoreBalancer (local view kept by pub/sub and snapshots,
    the configured/stored policy, in-flight counters shared across replicas). Without one: plain
    round robin over the configured backends, so a single proxy can run with no Redis at all.
    """
    if not config.redis.url:
        log.info("no redis.url: round robin over the configured backends")
        yield StaticRoundRobin.from_config(config)
        return
    store = open_store(config)
    try:
        async with open_store_balancer(config, store, listen=config.listen_address) as balancer:
            yield balancer
    finally:
        await store.close()


async def _spawn_workers(count: int, metrics_address: str) -> list[asyncio.subprocess.Process]:
    # Same config file (run_service exported its path as GOBALANCER_CONFIG) and environment, one worker
    # each; worker i serves its /metrics on the metrics port + i.
    procs = []
    for i in range(1, count + 1):
        env = dict(os.environ, GOBALANCER_PROXY_WORKERS="1")
        if metrics_address:
            env["GOBALANCER_METRICS_PROXY_LISTEN_ADDRESS"] = with_port_offset(metrics_address, i)
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.proxy", env=env, preexec_fn=die_with_parent
            )
        )
    return procs


async def _stop_workers(procs: list[asyncio.subprocess.Process], timeout: float) -> None:
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), timeout)
        except TimeoutError:
            p.kill()
            await p.wait()


async def run(config: Config, stop: asyncio.Event) -> None:
    tune_gc()  # (everything is imported by now)
    workers: list[asyncio.subprocess.Process] = []
    if config.proxy.workers > 1:
        workers = await _spawn_workers(config.proxy.workers - 1, config.metrics.proxy_listen_address)
    try:
        async with make_balancer(config) as balancer:
            server = Server(config, balancer, reuse_port=True)
            await server.start()
            replica = getattr(balancer, "replica", None)
            if replica is not None and config.metrics.enabled:
                replica.totals_source = StatsTotals(server.context.stats)
            info = {"replica": replica.id if replica is not None else f"proxy-{os.getpid()}", "mode": config.mode}
            registry = proxy_registry(lambda: server.context.stats, balancer, info)
            async with metrics_server(config.metrics.proxy_listen_address, registry) as bound:
                if replica is not None:
                    replica.info.metrics = bound
                await stop.wait()
                log.info("draining", drain_sec=float(config.timeout.drain_sec))
                await server.stop()
    finally:
        if workers:
            await _stop_workers(workers, float(config.timeout.drain_sec) + 5.0)


def main(argv: list[str] | None = None) -> int:
    return run_service(SERVICE, run, argv)
