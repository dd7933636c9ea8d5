"""Body transfers that stop moving are cut after an idle timeout, blaming the side that stopped."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tests.helpers import eventually
from tests.integration.proxy.backends import (
    Backend,
    Backends,
    Request,
    Stalled,
    download,
    pause_reading,
    read_response,
)
from tests.integration.proxy.conftest import StartProxy

IDLE = {"backend_idle_sec": 0.3, "client_idle_sec": 0.3}


def stall_after(payload: bytes) -> object:
    """A handler that writes ``payload`` and then neither writes nor closes (until the test ends)."""

    async def handler(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(payload)
        await w.drain()
        await asyncio.sleep(30)
        return False

    return handler


def trickle(pieces: int, delay: float) -> object:
    async def handler(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % pieces)
        for _ in range(pieces):
            await asyncio.sleep(delay)
            w.write(b"x")
            await w.drain()
        return True

    return handler


async def test_backend_stalling_mid_body_aborts_the_client(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")))  # type: ignore[arg-type]
    proxy = await start_proxy([b], timeout=IDLE)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100" in head
    assert await asyncio.wait_for(reader.readexactly(10), 5) == b"only ten b"
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        rest = await asyncio.wait_for(reader.read(-1), 5)
    except ConnectionResetError:
        rest = b""
    assert rest == b"" and 0.25 <= loop.time() - start < 3  # truncated: the client knows it failed
    assert proxy.context.stats.idle_timeouts == 1
    writer.close()


async def test_backend_stalling_before_any_body_byte_is_a_504(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")))  # type: ignore[arg-type]
    proxy = await start_proxy([b], timeout=IDLE)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    resp = await asyncio.wait_for(read_response(reader), 5)
    assert resp.status == 504 and resp.header("Connection") == "close"
    assert proxy.context.stats.errors[504] == 1 and proxy.context.stats.idle_timeouts == 1
    writer.close()


async def test_slow_but_steady_body_is_not_cut(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(trickle(8, 0.1)))  # type: ignore[arg-type]
    proxy = await start_proxy([b], timeout=IDLE)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    resp = await asyncio.wait_for(read_response(reader), 5)
    assert resp.status == 200 and resp.body == b"x" * 8  # 0.8 s in all, never 0.3 s without a byte
    assert proxy.context.stats.idle_timeouts == 0
    writer.close()


async def test_client_stalling_mid_upload_gets_408(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    assert isinstance(b, Backend)
    proxy = await start_proxy([b], timeout=IDLE)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
    resp = await asyncio.wait_for(read_response(reader), 5)
    assert resp.status == 408 and resp.header("Connection") == "close"
    assert await asyncio.wait_for(reader.read(-1), 5) == b""
    assert b.requests == []  # the backend never got a complete request
    assert proxy.context.stats.idle_timeouts == 1
    writer.close()


async def test_backend_not_reading_the_upload_is_a_504(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Stalled())
    proxy = await start_proxy([b], timeout=IDLE)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    size = 64 * 1024 * 1024
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)

    async def upload() -> None:  # keeps sending as fast as the proxy reads: the client never stalls
        block = bytes(1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(block)):
                writer.write(block)
                await writer.drain()

    uploading = asyncio.create_task(upload())
    try:
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert resp.status == 504
        assert proxy.context.stats.idle_timeouts == 1
    finally:
        uploading.cancel()
        writer.transport.abort()


async def test_client_not_reading_the_response_is_cut(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend(download(256 * 1024 * 1024)))
    proxy = await start_proxy([b], timeout=IDLE)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proxy.port))
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    pause_reading(writer)  # never read: the proxy's buffers toward us fill up
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await eventually(lambda: proxy.context.stats.idle_timeouts == 1, message="client stall detected")
    assert not proxy.context.connections
    writer.transport.abort()
