"""Rate limits in the data plane, through real sockets: 429 with Retry-After and the RateLimit fields, keys
by client address, header and rule, rules per route and pool, nothing refused reaching a backend."""

from __future__ import annotations

import asyncio

from services.proxy.observability.metrics import proxy_registry
from tests.integration.proxy.backends import Backend, Backends, read_response, request
from tests.integration.proxy.conftest import StartYaml


async def statuses(port: int, raws: list[bytes]) -> list[tuple[int, dict[str, str]]]:
    """Send each request on one keep-alive connection; (status, headers) of each response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        out = []
        for raw in raws:
            writer.write(raw)
            resp = await asyncio.wait_for(read_response(reader), 5)
            out.append((resp.status, {n.lower(): v for n, v in resp.headers}))
        return out
    finally:
        writer.close()


GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


async def test_over_the_limit_a_429_with_its_headers_and_nothing_reaches_a_backend(
    backends: Backends, start_yaml: StartYaml
) -> None:
    b = await backends.add(Backend())
    proxy = await start_yaml(
        f'backends: [{{address: "{b.address}"}}]\nlisten_address: 127.0.0.1:1\n'
        "rate_limits: {rules: [{name: per-client, rate: 5/min}]}\n"
    )
    assert proxy.context.gate is not None and proxy.context.gate.simple is not None
    got = await statuses(proxy.port, [GET] * 8)
    assert [s for s, _ in got] == [200] * 5 + [429] * 3  # the keep-alive connection goes on after a 429
    assert len(b.requests) == 5
    _, headers = got[5]
    retry = int(headers["retry-after"])
    assert 1 <= retry <= 60
    assert headers["ratelimit-policy"] == '"per-client";q=5;w=60'
    assert headers["ratelimit"] == f'"per-client";r=0;t={retry}'
    assert headers["x-request-id"]
    assert proxy.context.stats.errors[429] == 3
    # /metrics counts the refusals per rule.
    registry = proxy_registry(lambda: proxy.context.stats, proxy.balancer, {}, lambda: proxy.context.gate)
    assert registry.get_sample_value("gobalancer_proxy_rate_limited_total", {"rule": "per-client"}) == 3


async def test_a_refused_request_with_a_body_still_coming_closes_its_connection(
    backends: Backends, start_yaml: StartYaml
) -> None:
    b = await backends.add(Backend())
    proxy = await start_yaml(
        f'backends: [{{address: "{b.address}"}}]\nlisten_address: 127.0.0.1:1\n'
        "rate_limits: {rules: [{name: once, rate: 1/h}]}\n"
    )
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    assert (await request(proxy.port, post)).status == 200
    resp = await request(proxy.port, post)  # the whole body came: the connection may go on
    assert resp.status == 429 and resp.header("Connection") is None
    # A body still to come is never read for a refused request: 429 at once, and the connection closes.
    resp = await request(proxy.port, b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nhe")
    assert resp.status == 429 and resp.header("Connection") == "close"
    assert len(b.requests) == 1


async def test_keys_by_header_and_rules_per_route(backends: Backends, start_yaml: StartYaml) -> None:
    web = await backends.add(Backend(name="web"))
    api = await backends.add(Backend(name="api"))
    proxy = await start_yaml(
        f"""listen_address: 127.0.0.1:1
backends: [{{address: "{web.address}"}}]
pools:
  api: {{backends: [{{address: "{api.address}"}}]}}
routes:
  - {{name: api, host: api.example.com, pool: api}}
  - {{name: web, host: www.example.com, pool: default}}
rate_limits:
  rules:
    - {{name: per-key, applies_to: "route:api", key: "header:X-Api-Key", rate: 2/min}}
    - {{name: site, applies_to: "pool:default", key: rule, rate: 3/min}}
"""
    )
    assert proxy.context.gate is not None and proxy.context.gate.simple is None

    def api_get(key: str) -> bytes:
        return f"GET /v1 HTTP/1.1\r\nHost: api.example.com\r\nX-Api-Key: {key}\r\n\r\n".encode()

    got = await statuses(proxy.port, [api_get("a"), api_get("a"), api_get("a"), api_get("b"), api_get("b")])
    assert [s for s, _ in got] == [200, 200, 429, 200, 200]  # a bucket per key
    assert got[2][1]["ratelimit-policy"] == '"per-key";q=2;w=60'
    www = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
    got = await statuses(proxy.port, [www] * 4)
    assert [s for s, _ in got] == [200, 200, 200, 429]  # one bucket for the whole rule
    assert len(api.requests) == 4 and len(web.requests) == 3


async def test_without_rules_there_is_no_gate(backends: Backends, start_yaml: StartYaml) -> None:
    b = await backends.add(Backend())
    proxy = await start_yaml(f'backends: [{{address: "{b.address}"}}]\nlisten_address: 127.0.0.1:1\n')
    assert proxy.context.gate is None
    assert [s for s, _ in await statuses(proxy.port, [GET] * 20)] == [200] * 20
