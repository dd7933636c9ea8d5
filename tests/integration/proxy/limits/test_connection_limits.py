"""Connection limits (circuit breaking) with a slow backend, through real sockets: a proxy Server set up as
``services.proxy.main`` sets it up (``limit_pools``), HTTP and TCP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from services.proxy.balancer import StaticRoundRobin
from services.proxy.limits.pools import LimitedBalancer, limit_pools
from services.proxy.main import static_pools
from services.proxy.observability.metrics import proxy_registry
from services.proxy.server import Server
from services.proxy.store_balancer import open_store_balancer
from shared.config import load_config
from shared.models import Backend as StoredBackend
from shared.store import Store
from tests.helpers import eventually
from tests.integration.proxy.backends import Backend, Backends, Request, Response, echo, request, serving
from tests.integration.proxy.conftest import free_socket

GET = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"


class Held:
    """A backend handler that holds every request until released, counting how many it holds at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.now = 0
        self.most = 0

    async def __call__(self, backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.release.wait()
        finally:
            self.now -= 1
        return await echo(backend, req, w)


Limited = tuple[Server, list[LimitedBalancer]]
StartLimited = Callable[[str], Awaitable[Limited]]


@pytest.fixture
async def start_limited(tmp_path: Path) -> AsyncIterator[StartLimited]:
    servers: list[tuple[Server, list[LimitedBalancer]]] = []

    async def start(text: str) -> Limited:
        path = tmp_path / f"proxy{len(servers)}.yaml"
        path.write_text(text)
        config = load_config(path, {})
        balancer, pools, limited = limit_pools(config, StaticRoundRobin.from_config(config), static_pools(config))
        server = Server(config, balancer, reuse_port=False, pools=pools)
        await server.start(free_socket())
        servers.append((server, limited))
        return server, limited

    yield start
    for s, limited in servers:
        await s.stop(drain_sec=0.3)
        for pool in limited:
            await pool.close()


def reason(r: Response) -> str | None:
    return r.header("x-gobalancer-reason")


def samples(server: Server, limited: list[LimitedBalancer]) -> str:
    registry = proxy_registry(lambda: server.context.stats, server.balancer, {}, limited=limited)
    return generate_latest(registry).decode()


async def test_beyond_max_connections_requests_queue_then_run_and_beyond_max_pending_503_at_once(
    backends: Backends, start_limited: StartLimited
) -> None:
    held = Held()
    b = await backends.add(Backend(held))
    proxy, (pool,) = await start_limited(
        f'listen_address: 127.0.0.1:1\nbackends: [{{address: "{b.address}"}}]\n'
        "max_connections: 2\nmax_pending: 2\nqueue_timeout_sec: 10\n"
    )
    first = [asyncio.create_task(request(proxy.port, GET, timeout=10)) for _ in range(3)]
    await eventually(lambda: held.now == 2 and pool.pending == 1, message="2 in flight, 1 queued")
    # (queued too: an HTTP/1.0 request without Host, which gets its backend's address as Host once granted)
    first.append(asyncio.create_task(request(proxy.port, b"GET /old HTTP/1.0\r\n\r\n", timeout=10)))
    await eventually(lambda: pool.pending == 2, message="2 queued")
    start = time.monotonic()
    refused = await request(proxy.port, GET)
    assert refused.status == 503 and reason(refused) == "queue-full" and b"reason: queue-full" in refused.body
    assert time.monotonic() - start < 1.0  # at once, not after the queue timeout
    assert held.now == 2 and pool.pending == 2
    held.release.set()
    done = await asyncio.gather(*first)
    assert [r.status for r in done] == [200] * 4
    assert held.most == 2  # the backend never had more than max_connections
    assert [r.header("host") for r in b.requests if r.target == "/old"] == [b.address]
    assert (pool.local, pool.pending) == (0, 0)
    text = samples(proxy, [pool])
    assert 'gobalancer_proxy_pool_rejected_total{pool="default",reason="queue-full"} 1.0' in text
    assert 'gobalancer_proxy_pool_pending{pool="default"} 0.0' in text


async def test_a_queued_request_gives_up_after_queue_timeout_and_without_a_queue_503_at_once(
    backends: Backends, start_limited: StartLimited
) -> None:
    held = Held()
    b = await backends.add(Backend(held))
    proxy, (pool, strict) = await start_limited(
        f'listen_address: 127.0.0.1:1\nbackends: [{{address: "{b.address}"}}]\n'
        "max_connections: 1\nmax_pending: 1\nqueue_timeout_sec: 0.3\n"
        "pools:\n"
        f'  strict: {{backends: [{{address: "{b.address}"}}], max_connections: 1}}\n'
        f'  free: {{backends: [{{address: "{b.address}"}}]}}\n'
    )
    # Only the pools with limits are wrapped.
    assert (pool.name, strict.name) == ("default", "strict")
    assert proxy.context.pools["strict"] is strict and isinstance(proxy.context.pools["free"], StaticRoundRobin)
    holding = asyncio.create_task(request(proxy.port, GET, timeout=10))
    await eventually(lambda: held.now == 1)
    start = time.monotonic()
    timed_out = await request(proxy.port, GET)
    waited = time.monotonic() - start
    assert timed_out.status == 503 and reason(timed_out) == "queue-timeout"
    assert 0.25 <= waited < 2.0, waited
    assert pool.rejected["queue-timeout"] == 1 and pool.pending == 0
    held.release.set()
    assert (await holding).status == 200
    assert pool.local == 0
    # A client that leaves while queued gives its place up.
    held.release.clear()
    holding = asyncio.create_task(request(proxy.port, GET, timeout=10))
    await eventually(lambda: held.now == 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(GET)
    await eventually(lambda: pool.pending == 1)
    writer.close()
    await eventually(lambda: pool.pending == 0, message="the queued client left")
    held.release.set()
    assert (await holding).status == 200
    await eventually(lambda: pool.local == 0)
    del reader


async def test_without_a_queue_the_pool_refuses_at_once_and_per_backend_limits_steer(
    backends: Backends, start_limited: StartLimited
) -> None:
    held = Held()
    a = await backends.add(Backend(held, name="a"))
    other = Held()
    c = await backends.add(Backend(other, name="c"))
    proxy, (pool,) = await start_limited(
        "listen_address: 127.0.0.1:1\n"
        f'backends: [{{address: "{a.address}", max_connections: 1}}, {{address: "{c.address}"}}]\n'
        "max_connections: 3\n"
    )
    inflight = [asyncio.create_task(request(proxy.port, GET, timeout=10)) for _ in range(3)]
    await eventually(lambda: held.now + other.now == 3)
    assert (held.now, other.now) == (1, 2)  # a is at its own limit: the round robin went on to c
    start = time.monotonic()
    refused = await request(proxy.port, GET)
    assert refused.status == 503 and reason(refused) == "pool-saturated"
    assert time.monotonic() - start < 1.0
    held.release.set()
    other.release.set()
    assert [r.status for r in await asyncio.gather(*inflight)] == [200] * 3
    assert held.most == 1 and pool.rejected["pool-saturated"] == 1


async def test_tcp_uses_the_same_limits(start_limited: StartLimited) -> None:
    release = asyncio.Event()
    open_now = 0

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        try:
            await release.wait()
            writer.write(b"bye")
            await writer.drain()
        finally:
            open_now -= 1
            writer.close()

    async with serving(hold) as address:
        proxy, (pool,) = await start_limited(
            f'listen_address: 127.0.0.1:1\nmode: tcp\nbackends: [{{address: "{address}"}}]\n'
            "max_connections: 1\nmax_pending: 1\nqueue_timeout_sec: 10\n"
        )
        r1, w1 = await asyncio.open_connection("127.0.0.1", proxy.port)
        await eventually(lambda: open_now == 1)
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)  # queued
        await eventually(lambda: pool.pending == 1)
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.port)  # refused: closed at once
        assert await asyncio.wait_for(r3.read(), 2) == b""
        assert open_now == 1 and pool.rejected["queue-full"] == 1
        release.set()
        assert await asyncio.wait_for(r1.read(), 5) == b"bye"
        w1.close()  # (a TCP connection holds its slot until both sides are done)
        assert await asyncio.wait_for(r2.read(), 5) == b"bye"  # the queued one got the slot
        for w in (w2, w3):
            w.close()
        await eventually(lambda: pool.local == 0 and pool.pending == 0)


async def test_max_connections_is_global_across_replicas_through_redis(
    backends: Backends, redis_url: str, namespace: str, store: Store, tmp_path: Path
) -> None:
    """Two replicas (each its own Store, StoreBalancer and heartbeat), round robin, max_connections 2 for the
    pool: once replica A holds 2 requests, replica B refuses at once (the refresh reads the global counts
    even for round robin), and admits again when A's requests ended."""
    held = Held()
    b = await backends.add(Backend(held))
    await store.create_backend(StoredBackend(address=b.address))
    await store.set_health(b.address, "up")
    path = tmp_path / "proxy.yaml"
    path.write_text(
        f'listen_address: 127.0.0.1:1\nbackends: [{{address: "{b.address}"}}]\nmax_connections: 2\n'
        f"redis: {{url: '{redis_url}', namespace: {namespace}, counts_sync_sec: 0.05, heartbeat_sec: 0.2}}\n"
    )
    config = load_config(path, {})
    async with contextlib.AsyncExitStack() as stack:
        replicas: list[tuple[Server, LimitedBalancer]] = []
        for _ in range(2):
            own = Store.from_url(redis_url, namespace)
            stack.push_async_callback(own.close)
            inner = await stack.enter_async_context(open_store_balancer(config, own))
            balancer, pools, (pool,) = limit_pools(config, inner, {})
            stack.push_async_callback(pool.close)
            server = Server(config, balancer, reuse_port=False, pools=pools)
            await server.start(free_socket())
            stack.push_async_callback(server.stop, 0.3)
            replicas.append((server, pool))
        (a, pool_a), (b_proxy, pool_b) = replicas
        holding = [asyncio.create_task(request(a.port, GET, timeout=10)) for _ in range(2)]
        await eventually(lambda: held.now == 2)
        await eventually(lambda: pool_b._others == 2, message="B read A's in-flight count from Redis")
        refused = await request(b_proxy.port, GET)
        assert refused.status == 503 and reason(refused) == "pool-saturated"
        assert held.now == 2 and pool_a.local == 2 and pool_b.local == 0
        held.release.set()
        assert [r.status for r in await asyncio.gather(*holding)] == [200, 200]
        await eventually(lambda: pool_b._others == 0, message="B read that A's requests ended")
        assert (await request(b_proxy.port, GET)).status == 200
