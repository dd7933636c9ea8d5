"""TCP mode counts per backend: bytes both ways, connection durations, connect errors and retries."""

from __future__ import annotations

from prometheus_client import generate_latest

from services.proxy.observability.metrics import proxy_registry
from tests.helpers import eventually
from tests.integration.proxy.conftest import StartProxy
from tests.integration.proxy.test_http import unused_address
from tests.integration.proxy.test_tcp import relay, upper_after_eof


async def test_tcp_relay_counted_per_backend(start_proxy: StartProxy) -> None:
    received: list[bytes] = []
    dead = unused_address()
    async with upper_after_eof(received) as address:
        proxy = await start_proxy([dead, address], mode="tcp", proxy={"retry_budget": 1.0})
        payload = b"hello over tcp" * 100
        assert await relay(proxy.port, payload) == payload.upper()
        stats = proxy.context.stats
        b = await eventually(lambda: stats.backends.get(address), message="relay counted")
        await eventually(lambda: b.duration.counts != [0] * len(b.duration.counts), message="connection finished")
        assert b.request_bytes == len(payload) and b.response_bytes == len(payload)
        assert sum(b.ttfb.counts) == 1 and b.connect_errors == 0
        d = stats.backends[dead]
        assert d.connect_errors == 1 and d.retries == 1 and d.classes[0] == 1
        text = generate_latest(proxy_registry(lambda: stats, proxy.balancer, {})).decode()
        assert f'gobalancer_proxy_backend_sent_bytes_total{{backend="{address}"}} {float(len(payload))}' in text
