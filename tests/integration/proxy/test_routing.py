"""Routes to named pools through real sockets: host and path rules, the fast and the general path alike,
404 with the request id, prefix stripping, Host rewriting, conditions, per-route metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.proxy.main import static_pools
from services.proxy.server import Server
from shared.config import ListenerConfig
from tests.integration.proxy.backends import Backend, Backends, read_response, request
from tests.integration.proxy.conftest import StartYaml, free_socket


async def pools_of(backends: Backends, *names: str) -> dict[str, Backend]:
    return {name: await backends.add(Backend(name=name)) for name in names}


def two_pools(b: dict[str, Backend], extra: str = "") -> str:
    return f"""
listen_address: 127.0.0.1:1
backends: [{{address: "{b["web"].address}"}}]
pools:
  api: {{backends: [{{address: "{b["api"].address}"}}]}}
  static: {{backends: [{{address: "{b["static"].address}"}}]}}
routes:
  - {{name: api-host, host: api.example.com, pool: api}}
  - {{name: assets, host: www.example.com, path_prefix: /assets, pool: static, strip_prefix: true}}
  - {{name: www, host: www.example.com, pool: default}}
  - {{name: any-api, host: "*.example.net", path_prefix: /v1, pool: api, rewrite_host: backend.internal}}
{extra}
"""


async def get(port: int, host: str, target: str = "/", extra: str = "") -> tuple[int, str | None, str | None, bytes]:
    raw = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
    resp = await request(port, raw)
    return resp.status, resp.header("X-Backend"), resp.header("X-Seen-Target"), resp.body


async def test_requests_go_to_their_routes_pools(backends: Backends, start_yaml: StartYaml) -> None:
    b = await pools_of(backends, "web", "api", "static")
    proxy = await start_yaml(two_pools(b))
    port = proxy.port
    assert (await get(port, "api.example.com", "/users?id=1"))[:3] == (200, "api", "/users?id=1")
    assert (await get(port, "API.Example.com:8080", "/"))[:2] == (200, "api")  # case and port do not matter
    assert (await get(port, "www.example.com", "/index.html"))[:2] == (200, "web")
    assert (await get(port, "www.example.com", "/assets/app.js?v=2"))[:3] == (200, "static", "/app.js?v=2")
    assert (await get(port, "www.example.com", "/assets"))[:3] == (200, "static", "/")
    assert (await get(port, "www.example.com", "/assetsx"))[:2] == (200, "web")  # segment boundaries
    # A wildcard host, with the Host rewritten for the backend (X-Forwarded-Host keeps the client's).
    assert (await get(port, "eu.shop.example.net", "/v1/cart"))[:2] == (200, "api")
    seen = b["api"].requests[-1]
    assert seen.header("Host") == "backend.internal" and seen.header("X-Forwarded-Host") == "eu.shop.example.net"


async def test_no_route_is_a_404_with_the_request_id_and_reaches_no_backend(
    backends: Backends, start_yaml: StartYaml
) -> None:
    b = await pools_of(backends, "web", "api", "static")
    proxy = await start_yaml(two_pools(b))
    before = sum(len(x.requests) for x in b.values())
    for host, target in (("other.example.org", "/"), ("example.net", "/v1/x"), ("a.example.net", "/v2")):
        status, backend, _, body = await get(proxy.port, host, target, "X-Request-ID: rid-404\r\n")
        assert status == 404 and backend is None and b"request id: rid-404" in body
    # A 404 with a body: the body is not forwarded anywhere, and the connection closes (not read).
    resp = await request(proxy.port, b"POST /x HTTP/1.1\r\nHost: nowhere\r\nContent-Length: 3\r\n\r\nabc")
    assert resp.status == 404
    assert sum(len(x.requests) for x in b.values()) == before
    assert proxy.context.stats.errors[404] == 4


async def test_a_default_pool_takes_what_no_route_matches(backends: Backends, start_yaml: StartYaml) -> None:
    b = await pools_of(backends, "web", "api", "static")
    proxy = await start_yaml(two_pools(b, "default_pool: static"))
    assert (await get(proxy.port, "unknown.example.org", "/x"))[:3] == (200, "static", "/x")


async def test_conditions_on_method_and_header(backends: Backends, start_yaml: StartYaml) -> None:
    b = await pools_of(backends, "web", "api", "static")
    text = f"""
listen_address: 127.0.0.1:1
backends: [{{address: "{b["web"].address}"}}]
pools:
  api: {{backends: [{{address: "{b["api"].address}"}}]}}
  static: {{backends: [{{address: "{b["static"].address}"}}]}}
routes:
  - {{name: canary, host: h, headers: {{X-Canary: "yes"}}, pool: static}}
  - {{name: writes, host: h, methods: [POST, DELETE], pool: api}}
  - {{name: rest, host: h, pool: default}}
"""
    proxy = await start_yaml(text)
    assert (await get(proxy.port, "h", "/", "x-canary:  yes\r\n"))[:2] == (200, "static")
    assert (await get(proxy.port, "h", "/", "X-Canary: no\r\n"))[:2] == (200, "web")
    assert (await get(proxy.port, "h"))[:2] == (200, "web")
    resp = await request(proxy.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    assert resp.status == 200 and resp.header("X-Backend") == "api" and resp.body == b"hi"
    resp = await request(proxy.port, b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.header("X-Backend") == "api"


async def test_keep_alive_requests_on_one_connection_each_take_their_route(
    backends: Backends, start_yaml: StartYaml
) -> None:
    b = await pools_of(backends, "web", "api", "static")
    proxy = await start_yaml(two_pools(b))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        seen = []
        for host, target in [("api.example.com", "/a"), ("www.example.com", "/assets/x"), ("nowhere", "/")] * 3:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            resp = await asyncio.wait_for(read_response(reader), 5)
            seen.append((resp.status, resp.header("X-Backend")))
        assert seen == [(200, "api"), (200, "static"), (404, None)] * 3
    finally:
        writer.close()


async def test_per_route_metrics_carry_pool_and_route(backends: Backends, start_yaml: StartYaml) -> None:
    b = await pools_of(backends, "web", "api", "static")
    proxy = await start_yaml(two_pools(b))
    for _ in range(3):
        await get(proxy.port, "api.example.com")
    await get(proxy.port, "www.example.com", "/assets/a")  # the general path (strip_prefix)
    routes = proxy.context.stats.routes
    assert sum(routes[("api", "api-host")].classes_total()) == 3
    assert sum(routes[("static", "assets")].classes_total()) == 1
    assert sum(routes[("default", "www")].classes_total()) == 0  # known from the start, with nothing yet
    assert set(routes) <= {("api", "api-host"), ("static", "assets"), ("default", "www"), ("api", "any-api")}


async def test_without_routes_the_one_pool_path_is_unchanged(backends: Backends, start_yaml: StartYaml) -> None:
    b = await pools_of(backends, "web", "api", "static")
    proxy = await start_yaml(f"listen_address: 127.0.0.1:1\nbackends: [{{address: '{b['web'].address}'}}]\n")
    assert proxy.context.routes is None
    assert (await get(proxy.port, "anything", "/x"))[:2] == (200, "web")


async def test_listeners_of_one_pool_tcp_and_http(backends: Backends, start_yaml: StartYaml, tmp_path: Path) -> None:
    """``listeners:``: a TCP listener relays to its pool; an HTTP listener with a pool ignores the routes;
    they count into the main listener's Stats (one /metrics)."""
    b = await pools_of(backends, "web", "api", "static")
    main = await start_yaml(two_pools(b))
    config = main.config
    pools = static_pools(config)
    shared = main.context.stats
    extra = []
    for listener in (
        ListenerConfig(listen_address="127.0.0.1:1", mode="tcp", pool="api"),
        ListenerConfig(listen_address="127.0.0.1:1", mode="http", pool="static"),
    ):
        server = Server(config, main.balancer, reuse_port=False, pools=pools, listener=listener, stats=shared)
        await server.start(free_socket())
        extra.append(server)
    try:
        tcp, http = extra
        assert tcp.context.routes is None and http.context.routes is None
        # TCP: the bytes go as they are (no Via, no X-Forwarded-*), to the api pool.
        resp = await request(tcp.port, b"GET /raw HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert resp.header("X-Backend") == "api" and b["api"].requests[-1].header("Via") is None
        # HTTP to one pool: www.example.com would route to the default pool; this listener sends it to static.
        assert (await get(http.port, "www.example.com", "/x"))[:3] == (200, "static", "/x")
        assert (await get(http.port, "nowhere", "/y"))[:2] == (200, "static")
        assert http.context.stats is shared and tcp.context.stats is shared
    finally:
        for s in extra:
            await s.stop(drain_sec=0.3)
