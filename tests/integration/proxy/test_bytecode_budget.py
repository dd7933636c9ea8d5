"""The hot path's budget: a plain keep-alive GET costs at most 360 Python bytecodes in the proxy (issue
16 asked for 400; 345 today: the budget keeps the C counters' and route lookup's gain), routing over 100
routes at most 30 more (issue 20: 60; 22 today), one rate-limit rule at most 30 more (21 today).

Bytecodes do not vary from run to run (unlike req/s on a shared machine), so the budget is a test:
a change that pushes the common path over it fails here, with the functions that cost the most.
The proxy runs as in production (its own process, uvloop, metrics and traceparent on, default
settings) under the same tracer as ``python -m bench bytecodes``; the backend answers like nginx
(``Connection: keep-alive``, a 100-byte Content-Length body).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bytecodes import count_bytecodes
from bench.proxy import gobalancer_conf, limited_conf, routed_conf
from shared.redis_server import free_port

BUDGET = 360
BODY = b"x" * 100
REQUESTS = 4000  # as bench bytecodes: background work (sweeps) and connection set-up amortised alike
CONNECTIONS = 20


@pytest.fixture
def nginx_like_backend() -> Iterator[int]:
    """A keep-alive backend in its own thread and event loop (not traced: another process is)."""
    loop = asyncio.new_event_loop()
    port = free_port()
    head = b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n"
    response = head + b"Connection: keep-alive\r\n\r\n" + BODY

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", port))
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield port
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_a_plain_keep_alive_get_stays_within_the_budget(tmp_path: Path, nginx_like_backend: int) -> None:
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(gobalancer_conf(port, [nginx_like_backend]))
    counts = count_bytecodes(config, port, tmp_path / "counts.json", REQUESTS, CONNECTIONS, len(BODY))
    per_request = sum(counts.values()) / REQUESTS
    top = ", ".join(f"{name} {n / REQUESTS:.0f}" for name, n in counts.most_common(6))
    assert per_request <= BUDGET, f"{per_request:.1f} bytecodes per request (budget {BUDGET}): {top}"
    assert per_request > 100, f"implausibly few bytecodes counted ({per_request:.1f}): is the tracer on?"
    print(f"{per_request:.1f} bytecodes per request: {top}")


# What routing by host and path (100 routes, 20 pools) and one rate-limit rule on the client's address may
# add per request (issues 20 and 21 asked for routing <= 60; both are about 21 today).
EXTRA_BUDGETS = {"routed": 30, "limited": 30}
CONFS = {"routed": routed_conf, "limited": limited_conf}


@pytest.mark.parametrize("variant", ["routed", "limited"])
def test_routing_and_a_rate_limit_rule_cost_at_most_30_bytecodes_more(
    tmp_path: Path, nginx_like_backend: int, variant: str
) -> None:
    """The same requests through 100 routes to 20 pools (``bench.proxy.routed_conf``: exact and wildcard
    hosts, prefixes of several lengths; the requests match a host with deeper prefixes too), or with one
    rate-limit rule on ``client_ip`` that they stay under (``bench.proxy.limited_conf``)."""
    per_request = {}
    for name, conf in (("plain", gobalancer_conf), (variant, CONFS[variant])):
        port = free_port()
        config = tmp_path / f"{name}.yaml"
        config.write_text(conf(port, [nginx_like_backend]))
        counts = count_bytecodes(config, port, tmp_path / f"{name}.json", REQUESTS, CONNECTIONS, len(BODY))
        per_request[name] = sum(counts.values()) / REQUESTS
    extra = per_request[variant] - per_request["plain"]
    budget = EXTRA_BUDGETS[variant]
    assert 5 < extra <= budget, f"{variant} costs {extra:.1f} bytecodes per request (budget {budget})"
