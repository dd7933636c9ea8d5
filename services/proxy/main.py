"""Entry point of the proxy service: ``python -m services.proxy --config FILE``.

With ``proxy.workers`` = N > 1 this process starts N-1 more processes running the same config file
and environment (services/proxy/workers.py: restarted when one dies); each binds its own listener with
SO_REUSEPORT and the kernel spreads connections over them. SIGTERM to this process is forwarded to them,
and each runs the shutdown sequence of :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from typing import NamedTuple

from services.proxy.balancer import Balancer, StaticRoundRobin
from services.proxy.limits.live import LiveLimits
from services.proxy.limits.pools import LimitedBalancer, limit_pools
from services.proxy.observability.metrics import proxy_registry
from services.proxy.pools import StorePools, open_store_pools
from services.proxy.server import Server
from services.proxy.stats import StatsTotals
from services.proxy.workers import Workers
from shared.config import DEFAULT_POOL, Config
from shared.gc_tuning import tune_gc
from shared.logs import get_logger
from shared.metrics import metrics_server
from shared.service import open_store, run_service

SERVICE = "proxy"
log = get_logger("proxy")


def static_pools(config: Config) -> dict[str, Balancer]:
    """The named pools (all but ``default``) as configured, for a proxy without Redis: round robin over
    each pool's backends."""
    return {
        name: StaticRoundRobin.from_pool(pool) for name, pool in config.pool_configs().items() if name != DEFAULT_POOL
    }


class Balancers(NamedTuple):
    default: Balancer  # the default pool's
    pools: Mapping[str, Balancer]  # every pool's by name (live: pools come and go with the store)
    store_pools: StorePools | None  # with Redis: what follows the store (routes, pools)


@contextlib.asynccontextmanager
async def make_balancers(config: Config) -> AsyncIterator[Balancers]:
    """The Balancers the data plane asks for backends.

    With a Redis URL: one Redis-coordinated StoreBalancer per pool (local views kept by one pub/sub
    watch and snapshots, each pool's stored or configured policy, in-flight counters shared across
    replicas), and the store's route table. Without one: plain round robin over each pool's configured
    backends, so a single proxy can run with no Redis at all.
    """
    if not config.redis.url:
        log.info("no redis.url: round robin over the configured backends")
        yield Balancers(StaticRoundRobin.from_config(config), static_pools(config), None)
        return
    store = open_store(config)
    try:
        async with open_store_pools(config, store, listen=config.listen_address) as pools:
            yield Balancers(pools.default, pools.balancers, pools)
    finally:
        await store.close()


def follow_store_pools(
    pools: StorePools, servers: list[Server], limited: Mapping[str, LimitedBalancer] | None = None
) -> None:
    """Each listener's routing follows the store: a new pool, or a new route table, is swapped in. A pool
    with connection limits (``limited``: by name) is routed to through its wrapper."""

    def changed() -> None:
        balancers: dict[str, Balancer] = dict(pools.balancers)
        for name, wrapper in (limited or {}).items():
            if balancers.get(name) is wrapper.inner:
                balancers[name] = wrapper
        for server in servers:
            server.context.use_routes(balancers, pools.routes, pools.unmatched_pool)

    pools.listeners.append(changed)
    changed()


class Readiness:
    """What ``GET /ready`` on the metrics listener answers: 200 while serving, 503 once stopping."""

    def __init__(self) -> None:
        self.ready = False

    def __call__(self) -> bool:
        return self.ready


async def run(config: Config, stop: asyncio.Event) -> None:
    """Serve until ``stop``; then the shutdown sequence:

    1. ``/ready`` answers 503 at once (the balancers in front and Kubernetes probe it), and the workers
       get SIGTERM (each runs this same sequence);
    2. keep serving for ``proxy.shutdown_delay_sec`` while the balancers notice: new connections are still
       accepted, but each response closes its connection (clients reconnect, to another replica);
    3. stop accepting, let in-flight requests finish (up to ``timeout.drain_sec``), close idle keep-alive
       connections, exit.
    """
    tune_gc()  # (everything is imported by now)
    workers: Workers | None = None
    if config.proxy.workers > 1:
        workers = Workers(config.proxy.workers - 1, config.metrics.proxy_listen_address, config.proxy.cpu_affinity)
        await workers.start()
    delay = float(config.proxy.shutdown_delay_sec)
    readiness = Readiness()
    try:
        async with make_balancers(config) as (inner, inner_pools, store_pools):
            loop = asyncio.get_running_loop()
            # Pools with connection limits get their balancer wrapped (the others stay as they are).
            named = {name: b for name, b in inner_pools.items() if name != DEFAULT_POOL}
            balancer, pools, limited = limit_pools(config, inner, named)
            # The rate-limit rules: the store's (PUT /rate-limits) once there are some, else the config file's.
            store = getattr(inner, "store", None)
            limits = LiveLimits(config.rate_limits, loop, store)
            await limits.load()
            gate = limits.gate
            server = Server(config, balancer, reuse_port=True, pools=pools, gate=gate)
            await server.start()
            # config.listeners: more listeners (a TCP or HTTP one per pool, or HTTP through the routes),
            # counting into the same Stats (one /metrics).
            extra = [
                Server(
                    config, balancer, reuse_port=True, pools=pools, listener=x, stats=server.context.stats, gate=gate
                )
                for x in config.listeners
            ]
            for s in extra:
                await s.start()
            if store_pools is not None:  # pools and the route table follow the store
                follow_store_pools(store_pools, [server, *extra], {w.name: w for w in limited})
                store_pools.apply_listeners.append(limits.on_item)  # (a new table: swapped in every context)
            # The limiters reconcile with Redis in the background (without Redis each counts alone).
            limits.attach(s.context for s in (server, *extra))
            replica = getattr(inner, "replica", None)
            if replica is not None and config.metrics.enabled:
                # (with each rate-limit rule's refusals: the dashboard shows them per rule)
                replica.totals_source = StatsTotals(
                    server.context.stats, lambda: limits.gate.limiters if limits.gate is not None else ()
                )
            info = {"replica": replica.id if replica is not None else f"proxy-{os.getpid()}", "mode": config.mode}
            registry = proxy_registry(
                lambda: server.context.stats, inner, info, lambda: limits.gate, lambda: limits.sync, limited
            )
            async with metrics_server(config.metrics.proxy_listen_address, registry, ready=readiness) as bound:
                if replica is not None:
                    replica.info.metrics = bound
                readiness.ready = True
                await stop.wait()
                readiness.ready = False
                if workers is not None:
                    workers.begin_stop()
                if delay > 0:
                    log.info("not ready: still serving during the shutdown delay", shutdown_delay_sec=delay)
                    for s in (server, *extra):
                        s.begin_shutdown(delay)
                    await asyncio.sleep(delay)
                log.info("draining", drain_sec=float(config.timeout.drain_sec))
                await asyncio.gather(*(s.stop() for s in (server, *extra)))
                await limits.close()
                for pool in limited:
                    await pool.close()
    finally:
        if workers is not None:
            await workers.stop(delay + float(config.timeout.drain_sec) + 5.0)


def main(argv: list[str] | None = None) -> int:
    return run_service(SERVICE, run, argv)
