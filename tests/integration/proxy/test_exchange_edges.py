"""Edges of the request cycle, found by reviewing the rebuilt HTTP data plane: interim responses,
early answers, pausing, the pool's invariants, stall marks, byte counts and deadlines."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from services.proxy.balancer import Upstream
from services.proxy.http.client import ClientConnection
from services.proxy.http.upstream import UpstreamConnection
from tests.helpers import eventually
from tests.integration.proxy.backends import (
    Backend,
    Backends,
    Request,
    Response,
    read_response,
    serving,
)
from tests.integration.proxy.conftest import StartProxy


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# -- 1. an interim response leaves the upstream in the fast state: early answer mid-upload ----------


async def test_early_response_after_100_continue_does_not_turn_the_body_into_requests(start_proxy: StartProxy) -> None:
    """Backend: 100 Continue, then a final answer before the body is read (as a 401/413 would).
    The rest of the client's body must never be parsed as a request of its own."""
    received = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await _read_head(reader))
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        while data := await reader.read(65536):  # keep reading: record what the proxy sends next
            received.extend(data)
            if b"/smuggled" in data:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")

    async with serving(serve) as address:
        proxy = await start_proxy([address])
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
        )
        interim = await asyncio.wait_for(read_response(reader), 5)
        assert interim.status == 100
        final = await asyncio.wait_for(read_response(reader), 5)
        assert final.status == 200
        writer.write(smuggled)  # the body the client announced: not a request
        try:
            after = await asyncio.wait_for(reader.read(), 2)  # the proxy closes: the body was not read
        except TimeoutError:
            after = b"(still open)"
        writer.close()
        assert b"GET /smuggled HTTP/1.1\r\nHost: h\r\nX-Forwarded-For" not in received
        assert after == b"", after


# -- 2. HEAD with a body: the response is read on the fast path, as if it had a body ---------------


async def test_head_request_with_a_body_gets_its_response(backends: Backends, start_proxy: StartProxy) -> None:
    async def head_ok(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")  # a HEAD response: no body
        return True

    b = await backends.add(Backend(head_ok))
    proxy = await start_proxy([b], timeout={"backend_idle_sec": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"HEAD / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
    resp = await asyncio.wait_for(read_response(reader, "HEAD"), 3)
    writer.close()
    assert resp.status == 200  # not 504 after backend_idle_sec


# -- 3. complete_fast pools an upstream whose reading it paused (client write-blocked) -------------


async def test_a_pooled_connection_is_never_left_paused(start_proxy: StartProxy) -> None:
    body = b"z" * 40000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)  # one read
            await writer.drain()

    async with serving(serve) as address:
        proxy = await start_proxy([address], proxy={"high_water_bytes": 16384}, timeout={"response_sec": 1.0})
        # Client A reads nothing (small buffers both ways, as a slow client far away): a response
        # written by complete_fast passes the high-water mark, pause_writing fires inside that write.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", proxy.port))
        await eventually(lambda: proxy.context.connections, message="accepted")
        (conn,) = proxy.context.connections
        assert isinstance(conn, ClientConnection)
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        def blocked() -> bool:
            return conn.write_blocked

        for _ in range(20):
            await loop.sock_sendall(sock, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
            await asyncio.sleep(0.05)
            if blocked():
                break
        assert blocked()
        await eventually(lambda: proxy.context.pool.idle_count() == 1, message="upstream pooled")
        (up,) = proxy.context.pool.idle[address]
        assert isinstance(up, UpstreamConnection)
        paused = not up.transport.is_reading()
        # Client B gets that pooled connection: its response must come.
        rb, wb = await asyncio.open_connection("127.0.0.1", proxy.port)
        wb.write(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await asyncio.wait_for(read_response(rb), 5)
        sock.close()
        wb.close()
        assert not paused, ("a connection went back to the pool with reading paused", resp.status)
        assert resp.status == 200, resp.status


# -- 4. the pool: pool_size 0 and the idle sweep ----------------------------------------------------


async def test_pool_size_zero_never_reuses(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], proxy={"pool_size": 0})
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        writer.close()
    assert isinstance(b, Backend)
    assert proxy.context.pool.idle_count() == 0
    assert b.connections == 3


async def test_idle_upstreams_are_swept_after_a_refused_put(backends: Backends, start_proxy: StartProxy) -> None:
    """A put that refuses a connection creates the address's list without arming the sweep; the fast
    path then appends to it and nothing ever closes those idle connections."""
    b = await backends.add(Backend())
    proxy = await start_proxy([b], proxy={"pool_size": 1}, timeout={"backend_idle_sec": 0.2})
    pool = proxy.context.pool

    class Unusable:
        reusable = False
        idle_since = 0.0

        def close(self) -> None:
            pass

    pool.put(b.address, Unusable())  # (e.g. a connection with bytes to write)
    assert (await _get(proxy.port)).status == 200
    assert pool.idle_count() == 1
    await asyncio.sleep(1.0)  # five idle timeouts
    assert pool.idle_count() == 0, "idle upstream never swept"


async def _get(port: int) -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    try:
        return await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()


# -- 5. stall check: the upload's progress mark is the previous request's ---------------------------


async def test_upload_stall_mark_is_reset_per_request(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], timeout={"client_idle_sec": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    head = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"
    # Request 1: the sweep sees the upload stopped at len(head) + 4 bytes.
    writer.write(head + b"abcd")
    await asyncio.sleep(0.6)
    writer.write(b"efghij")
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    # Keep the connection busy (GETs) for longer than client_idle_sec ...
    for _ in range(8):
        await asyncio.sleep(0.15)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    # ... then request 2, whose head is exactly 4 bytes longer: bytes_in equals the old mark.
    head2 = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n"
    assert len(head2) == len(head) + 4
    writer.write(head2)
    await asyncio.sleep(0.5)  # half the client idle timeout: nothing may be cut yet
    early = reader._buffer[:]  # type: ignore[attr-defined]
    writer.write(bytes(100000))
    resp = await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert not early and resp.status == 200, (bytes(early[:40]), resp.status)


# -- 1b. ... and leaves got_bytes set on a pooled connection: a later stale-connection reset is not
#        retried, the client gets its connection closed without any response -------------------------


async def test_early_hints_do_not_poison_the_pooled_connection(start_proxy: StartProxy) -> None:
    conns = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        first = conns == 1
        n = 0
        while True:
            try:
                await _read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            n += 1
            if first and n == 2:  # the keep-alive race: the backend had just closed this connection
                writer.transport.abort()
                return
            if first:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)  # the final response in its own read
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with serving(serve) as address:
        proxy = await start_proxy([address])
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 103
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        writer.write(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")  # meets the stale pooled connection
        try:
            second = (await asyncio.wait_for(read_response(reader), 5)).status
        except ConnectionError:
            second = None
        writer.close()
        # One backend: nowhere else to retry, so a clean 502 (never a connection closed without an answer).
        assert second == 502, "a GET that met a closed pooled connection got no response at all"


# -- 6. a read paused while the upstream was connecting (QUEUED) is never resumed when the upstream
#       was full at attach time: PEER_FULL is lifted by resume_writing, QUEUED stays ---------------


async def test_upload_queued_during_connect_is_not_left_paused(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connect takes a network round trip (emulated: 0.2 s) while the client uploads at full speed:
    reading the client pauses (QUEUED); at attach the queue does not fit the fresh connection's
    kernel buffers: pause_writing (PEER_FULL) and QUEUED stays. resume_writing lifts PEER_FULL only."""
    from services.proxy.attempts import Attempts

    real_connect = Attempts.connect

    async def slow_connect(self: Attempts, upstream: Upstream, factory: Callable[[], asyncio.Protocol]) -> Any:
        await asyncio.sleep(0.2)
        proto = await real_connect(self, upstream, factory)
        if proto is not None:  # a path that takes little at once (a fresh connection's small window)
            proto.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return proto

    monkeypatch.setattr(Attempts, "connect", slow_connect)
    size = 1 << 20

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        await reader.readexactly(size)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # inherited by accepted sockets
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        proxy = await start_proxy([address], proxy={"high_water_bytes": 65536})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size + bytes(size))
        try:
            status = (await asyncio.wait_for(read_response(reader), 10)).status
        except TimeoutError:
            conns = [c for c in proxy.context.connections if isinstance(c, ClientConnection)]
            status = ("stuck", [(c.pauses.reasons, c.ex.bytes_in) for c in conns])  # type: ignore[assignment]
        writer.close()
        assert status == 200, status
    finally:
        server.close()


# -- 7. smaller: a plain request whose response spans reads is not counted in the byte metrics ------


async def test_bytes_counted_for_a_plain_request_with_a_large_response(start_proxy: StartProxy) -> None:
    body = b"y" * 300000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body)
        await writer.drain()

    async with serving(serve) as address:
        proxy = await start_proxy([address], metrics={"enabled": True})
        resp = await _get(proxy.port)
        assert resp.status == 200 and len(resp.body) == len(body)
        b = proxy.context.stats.backend(address)
        assert b.response_bytes >= len(body), (b.request_bytes, b.response_bytes)


# -- 8. smaller: the sweep's tick ignores response_sec: a 0.2 s response timeout fires after ~1-2 s -


async def test_response_timeout_is_not_late_by_seconds(start_proxy: StartProxy) -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serving(never) as address:
        proxy = await start_proxy([address], timeout={"response_sec": 0.2})
        loop = asyncio.get_running_loop()
        t = loop.time()
        assert (await _get(proxy.port)).status == 504
        assert loop.time() - t < 0.6, loop.time() - t
