"""HTTP mode through real sockets: forwarding, framing, keep-alive, pipelining, errors, retries, timeouts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Collection

import pytest

from services.proxy.balancer import StaticRoundRobin, Upstream
from services.proxy.http.client import ClientConnection
from tests.helpers import eventually
from tests.integration.proxy.backends import (
    Backend,
    Backends,
    RawCapture,
    Request,
    Stalled,
    chunked,
    close_mid_response,
    download,
    exchange_raw,
    read_response,
    request,
    reset,
    serving,
    slow,
    status,
)
from tests.integration.proxy.conftest import StartProxy


def unused_address() -> str:
    """An address nothing listens on (connect is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


async def test_forwarding_rewrites_headers(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b])
    raw = (
        b"POST /p?q=1 HTTP/1.1\r\nHost: example.org\r\nContent-Length: 5\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nX-Request-ID: abc-123\r\nConnection: keep-alive, X-Secret\r\n"
        b"X-Secret: hop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\nVia: 1.0 other\r\n"
        b"X-Forwarded-Proto: forged\r\n\r\nhello"
    )
    resp = await request(proxy.port, raw)
    assert resp.status == 200 and resp.body == b"hello"
    assert isinstance(b, Backend)
    seen: Request = b.requests[-1]
    assert seen.method == "POST" and seen.target == "/p?q=1" and seen.version == "HTTP/1.1"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"  # the peer is no trusted proxy: its claim is dropped
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.header("X-Forwarded-Host") == "example.org"
    assert seen.all("X-Request-ID") == ["abc-123"]
    assert seen.header("Via") == "1.0 other, 1.1 gobalancer"
    for hop in ("Connection", "X-Secret", "Keep-Alive", "TE", "Proxy-Authorization"):
        assert seen.header(hop) is None, hop
    assert seen.body == b"hello"


async def test_request_id_generated_when_absent(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b])
    await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(b, Backend)
    ids = [r.header("X-Request-ID") for r in b.requests]
    assert all(ids) and ids[0] != ids[1]


async def test_chunked_response_reframed_for_11_and_decoded_for_10(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(chunked))
    proxy = await start_proxy([b])
    resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.status == 200 and resp.body == b"hello chunked world"
    assert resp.header("Transfer-Encoding") == "chunked"
    raw = await exchange_raw(proxy.port, b"GET / HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"hello chunked world"  # 1.0 client: decoded, delimited by close
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head


async def test_chunked_request_body_reframed(backends: Backends, start_proxy: StartProxy) -> None:
    cap = await backends.add(Backend())
    proxy = await start_proxy([cap])
    raw = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
    )
    resp = await request(proxy.port, raw)
    assert resp.status == 200 and resp.body == b"abcde"
    assert isinstance(cap, Backend)
    assert b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" in bytes(cap.received)  # extensions and trailers dropped


async def test_keep_alive_pool_reuses_backend_connection(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b])
    for _ in range(3):  # three client connections, one after the other
        assert (await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")).status == 200
    assert isinstance(b, Backend)
    assert b.connections == 1 and len(b.requests) == 3
    assert proxy.context.stats.pool_hits == 2


async def test_backend_close_is_not_reused(backends: Backends, start_proxy: StartProxy) -> None:
    async def closing(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        return False

    b = await backends.add(Backend(closing))
    proxy = await start_proxy([b])
    for _ in range(2):
        resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert resp.status == 200 and resp.header("Connection") is None  # the backend's close is hop-by-hop
    assert isinstance(b, Backend) and b.connections == 2
    assert proxy.context.pool.idle_count() == 0


async def test_pipelined_requests_answered_in_order(backends: Backends, start_proxy: StartProxy) -> None:
    async def delayed(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05 if req.target == "/1" else 0)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(req.target), req.target.encode()))
        return True

    b1 = await backends.add(Backend(delayed))
    b2 = await backends.add(Backend(delayed))
    proxy = await start_proxy([b1, b2])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx"
        b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    bodies = [(await asyncio.wait_for(read_response(reader), 5)).body for _ in range(3)]
    writer.close()
    assert bodies == [b"/1", b"/2", b"/3"]


async def test_a_queued_fast_response_goes_out_before_what_follows_it(
    backends: Backends, start_proxy: StartProxy
) -> None:
    """The fast path queues a whole response in the outbox until the loop's turn ends: a pipelined
    request answered by the proxy itself (a 400) comes after it, and a close does not lose it."""

    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        arrived.set()
        await release.wait()  # (the first request only: every later one finds it set)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(req.target), req.target.encode()))
        return True

    b = await backends.add(Backend(held))
    proxy = await start_proxy([b])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")  # one plain head: the fast path
    await asyncio.wait_for(arrived.wait(), 5)  # forwarded: the next bytes are a read of their own
    writer.write(b"GET /second HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")  # pipelined, refused
    release.set()
    first = await asyncio.wait_for(read_response(reader), 5)
    second = await asyncio.wait_for(read_response(reader), 5)
    assert (first.status, first.body, second.status) == (200, b"/first", 400)
    writer.close()
    for _ in range(20):  # the last response of a connection: queued, then the close
        resp = await request(proxy.port, b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (resp.status, resp.body, resp.header("Connection")) == (200, b"/last", "close")


@pytest.mark.parametrize("then", ["refused request", "half-close"])
async def test_a_queued_fast_response_goes_first_when_the_client_is_read_in_the_same_turn(
    start_proxy: StartProxy, then: str
) -> None:
    """The backend's response and the client's next bytes reach the proxy in one batch of ready sockets
    (both written here before the loop polls again): the response, queued in the outbox, still leaves
    first, before the 400 the proxy writes itself for a bad pipelined request, and before the close that
    follows the client's FIN (uvloop closes the transport when ``eof_received`` returns)."""
    requested: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        requested.set_result(writer)
        await reader.read()  # until the proxy closes

    async with serving(serve) as address:
        proxy = await start_proxy([address])
        loop = asyncio.get_running_loop()
        client = socket.socket()  # a plain socket: its send() and shutdown() reach the kernel at once
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", proxy.port))
        try:
            await loop.sock_sendall(client, b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")  # the fast path
            backend = await asyncio.wait_for(requested, 5)
            backend.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")  # ready first in the batch
            if then == "half-close":
                client.shutdown(socket.SHUT_WR)
            else:
                client.send(b"GET /second HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
            received = bytearray()
            async with asyncio.timeout(5):
                while data := await loop.sock_recv(client, 65536):  # until the proxy closes
                    received += data
        finally:
            client.close()
    first, _, rest = bytes(received).partition(b"first")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), received
    if then == "refused request":
        assert rest.startswith(b"HTTP/1.1 400 "), received
    else:
        assert rest == b"", received


async def test_a_long_pipeline_of_refused_requests_is_answered_in_full(start_proxy: StartProxy) -> None:
    """5,000 pipelined requests each answered at once (503: no backend): no recursion, no drop."""
    proxy = await start_proxy([])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 5000)
    statuses = [(await asyncio.wait_for(read_response(reader), 10)).status for _ in range(5000)]
    writer.close()
    assert statuses == [503] * 5000


async def test_pipelined_requests_after_a_half_close_are_answered(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    writer.write_eof()  # the client is done sending, and waits for both answers
    first = await asyncio.wait_for(read_response(reader), 5)
    second = await asyncio.wait_for(read_response(reader), 5)
    assert (first.status, second.status) == (200, 200)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then the proxy closes
    writer.close()


async def test_http10_client_and_keep_alive(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    resp = await asyncio.wait_for(read_response(reader), 5)
    assert resp.status == 200 and resp.header("Connection") == "keep-alive"
    writer.write(b"GET /b HTTP/1.0\r\n\r\n")
    resp = await asyncio.wait_for(read_response(reader), 5)
    assert resp.header("Connection") == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert isinstance(b, Backend) and b.requests[0].header("Host") == b.address


async def test_backend_closing_mid_response_truncates_client(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(close_mid_response))
    proxy = await start_proxy([b])
    raw = await exchange_raw(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"only ten b")  # then the proxy closes


async def test_reset_backend_is_502_and_get_retried_elsewhere(backends: Backends, start_proxy: StartProxy) -> None:
    bad = await backends.add(Backend(reset, name="bad"))
    good = await backends.add(Backend(name="good"))
    proxy = await start_proxy([bad, good])
    for _ in range(4):
        resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert resp.status == 200 and resp.header("X-Backend") == "good"
    assert proxy.context.stats.retries >= 2


async def test_post_never_sent_twice(backends: Backends, start_proxy: StartProxy) -> None:
    bad1 = await backends.add(Backend(reset))
    bad2 = await backends.add(Backend(reset))
    proxy = await start_proxy([bad1, bad2])
    resp = await request(proxy.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    assert resp.status == 502 and resp.header("X-Request-ID")
    assert isinstance(bad1, Backend) and isinstance(bad2, Backend)
    assert len(bad1.requests) + len(bad2.requests) == 1
    assert proxy.context.stats.errors[502] == 1


async def test_connect_refused_retried_on_other_backend(backends: Backends, start_proxy: StartProxy) -> None:
    good = await backends.add(Backend(name="good"))
    proxy = await start_proxy([unused_address(), good])
    for _ in range(4):  # POST too: nothing reached the refused backend
        resp = await request(proxy.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
        assert resp.status == 200 and resp.header("X-Backend") == "good"
    assert proxy.context.stats.connect_failures >= 2


async def test_all_refused_is_502_and_none_is_503(start_proxy: StartProxy) -> None:
    proxy = await start_proxy([unused_address(), unused_address()])
    resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.status == 502 and b"request id" in resp.body
    empty = await start_proxy([])
    resp = await request(empty.port, b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-ID: mine\r\n\r\n")
    assert resp.status == 503 and resp.header("X-Request-ID") == "mine" and b"mine" in resp.body


async def test_retry_budget_bounds_retries(backends: Backends, start_proxy: StartProxy) -> None:
    good = await backends.add(Backend(name="good"))
    proxy = await start_proxy([unused_address(), good], proxy={"retry_budget": 0.0})
    proxy.context.budget.tokens = 1.0  # one retry left, no deposits
    statuses = [(await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")).status for _ in range(4)]
    assert statuses.count(502) >= 1 and proxy.context.stats.retries == 1


async def test_5xx_is_relayed_and_reported_failed(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(status))
    proxy = await start_proxy([b])
    resp = await request(proxy.port, b"GET /500 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.status == 500 and resp.body == b"ok"


async def test_response_timeout_is_504(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(slow(2.0)))
    proxy = await start_proxy([b], timeout={"response_sec": 0.2})
    resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.status == 504 and proxy.context.stats.errors[504] == 1


async def test_header_read_timeout_is_408(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(RawCapture())
    proxy = await start_proxy([b], timeout={"header_read_sec": 0.2})
    raw = await exchange_raw(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n")  # never finished
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert isinstance(b, RawCapture) and b.connections == 0


async def test_idle_keep_alive_connection_closed(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], timeout={"client_idle_sec": 0.2})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy without a response
    writer.close()


async def test_expect_100_continue(backends: Backends, start_proxy: StartProxy) -> None:
    async def continuing(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(req.body), req.body))
        return True

    b = await backends.add(Backend(continuing))
    proxy = await start_proxy([b])
    resp = await request(
        proxy.port, b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert resp.status == 200 and resp.body == b"abc"


@pytest.mark.parametrize("hash_key", ["header:X-User", "cookie:sid"])
async def test_affinity_key_passed_to_balancer(
    backends: Backends, start_proxy: StartProxy, hash_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], balancing={"hash_key": hash_key})
    keys: list[str] = []
    balancer = proxy.context.balancer
    original = balancer.pick

    def spy(key: str, exclude: Collection[str] = ()) -> Upstream | None:
        keys.append(key)
        return original(key, exclude)

    monkeypatch.setattr(balancer, "pick", spy)
    await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\nX-User: alice\r\nCookie: a=1; sid=s42\r\n\r\n")
    await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert keys == (["alice"] if hash_key.startswith("header") else ["s42"]) + ["127.0.0.1"]


async def test_upload_backpressure_reaches_client(backends: Backends, start_proxy: StartProxy) -> None:
    """A backend that stops reading makes the proxy stop reading the client: nothing piles up in the proxy."""
    stalled = await backends.add(Stalled())
    proxy = await start_proxy([stalled], proxy={"high_water_bytes": 65536})
    _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n")
    sent = 0
    block = bytes(1 << 20)
    with pytest.raises(TimeoutError):
        while sent < 100_000_000:
            writer.write(block)
            await asyncio.wait_for(writer.drain(), 1.0)
            sent += len(block)
    assert sent < 50_000_000  # held back long before the body was done (kernel buffers hold the rest)
    buffered = [
        c.ex.up.transport.get_write_buffer_size()
        for c in proxy.context.connections
        if isinstance(c, ClientConnection) and c.ex.up is not None
    ]
    assert buffered and max(buffered) <= 65536 + (1 << 20)  # at most one read beyond the high-water mark
    writer.close()


async def test_runs_on_uvloop() -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")


async def test_pool_idle_timeout_closes_backend_connections(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], timeout={"backend_idle_sec": 0.2})
    assert (await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")).status == 200
    assert proxy.context.pool.idle_count() == 1
    await eventually(lambda: proxy.context.pool.idle_count() == 0, message="idle connection swept")
    assert (await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")).status == 200
    assert isinstance(b, Backend) and b.connections == 2


async def test_backend_closing_idle_connection_leaves_the_pool(backends: Backends, start_proxy: StartProxy) -> None:
    async def answer_then_close(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # keep-alive by default, yet closes
        await w.drain()
        return False

    b = await backends.add(Backend(answer_then_close))
    proxy = await start_proxy([b])
    for _ in range(3):  # a POST must never meet the stale connection (it could not be retried)
        resp = await request(proxy.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
        assert resp.status == 200
        await eventually(lambda: proxy.context.pool.idle_count() == 0, message="closed connection left the pool")
    assert isinstance(b, Backend) and b.connections == 3


async def test_slow_client_does_not_make_the_proxy_buffer(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(download(64 << 20)))
    proxy = await start_proxy([b], proxy={"high_water_bytes": 65536})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=65536)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await reader.read(65536)  # then stop reading: the proxy must stop reading the backend too

    def client_buffer() -> int:
        clients = [c for c in proxy.context.connections if isinstance(c, ClientConnection)]
        sizes = [c.transport.get_write_buffer_size() for c in clients if c.transport is not None]
        return max(sizes, default=0)

    await eventually(lambda: client_buffer() > 0, message="proxy has something to write")
    await asyncio.sleep(0.3)  # give a misbehaving proxy time to pile the response up
    assert client_buffer() <= 65536 + (1 << 20)  # high-water mark plus at most one read
    writer.close()


async def test_unread_bytes_make_a_connection_unusable(backends: Backends, start_proxy: StartProxy) -> None:
    async def overlong(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")  # 5 bytes beyond the message
        return True

    b = await backends.add(Backend(overlong))
    proxy = await start_proxy([b])
    for _ in range(2):
        resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert resp.status == 200 and resp.body == b"ok"
    assert isinstance(b, Backend) and b.connections == 2  # never reused


class Recorder:
    """Wraps the balancer of a running proxy and records what the data plane reports."""

    def __init__(self, inner: StaticRoundRobin) -> None:
        self.inner = inner
        self.hash_key = inner.hash_key
        self.events: list[tuple[str, str, tuple[bool, float | None] | None]] = []

    def pick(self, key: str, exclude: Collection[str] = ()) -> Upstream | None:
        upstream = self.inner.pick(key, exclude)
        if upstream is not None:  # (a pick starts a request)
            self.events.append(("started", upstream.address, None))
        return upstream

    def finished(self, upstream: Upstream, ok: bool = True, latency: float | None = None) -> None:
        self.events.append(("finished", upstream.address, (ok, latency)))
        self.inner.finished(upstream, ok, latency)


async def test_every_attempt_reported_to_the_balancer(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(status))
    refused = unused_address()
    proxy = await start_proxy([refused, b])
    assert isinstance(proxy.balancer, StaticRoundRobin)
    recorder = Recorder(proxy.balancer)
    proxy.context.balancer = recorder
    assert (await request(proxy.port, b"GET /200 HTTP/1.1\r\nHost: h\r\n\r\n")).status == 200
    assert (await request(proxy.port, b"GET /503 HTTP/1.1\r\nHost: h\r\n\r\n")).status == 503
    events = recorder.events
    assert [(e[0], e[1]) for e in events[:4]] == [
        ("started", refused),
        ("finished", refused),
        ("started", b.address),
        ("finished", b.address),
    ]
    failed, ok = events[1][2], events[3][2]
    assert failed is not None and not failed[0]  # the connect failure
    assert ok is not None and ok[0] and ok[1] is not None and ok[1] >= 0  # a 200, with its latency
    last = events[-1][2]
    assert last is not None and not last[0]  # a 5xx response counts as a failure
    assert sum(e[0] == "started" for e in events) == sum(e[0] == "finished" for e in events)
    assert not any(recorder.inner.inflight.values())  # every pick was given back
