"""Small HTTP backends and a raw HTTP client for the proxy tests (asyncio, 127.0.0.1 only).

The backends parse requests independently of the proxy's parser (simple, strict enough for
well-formed input) and record every byte they receive, so a test can prove what was forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast


class _Headers:
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


@dataclass
class Request(_Headers):
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class Response(_Headers):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


Handler = Callable[["Backend", Request, asyncio.StreamWriter], Awaitable[bool]]


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return lines[0], headers


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"


def _framing(headers: list[tuple[str, str]]) -> tuple[int | None, bool]:
    cl = te = None
    for n, v in headers:
        if n.lower() == "content-length":
            cl = int(v)
        elif n.lower() == "transfer-encoding":
            te = v.lower()
    return cl, bool(te and te.endswith("chunked"))


async def echo(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
    """200 with the request body echoed and what the backend saw in headers."""
    w.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\nX-Seen-Target: %s\r\n\r\n"
        % (len(req.body), backend.name.encode(), req.target.encode())
        + req.body
    )
    return True


class Backend:
    """An HTTP/1.1 keep-alive server whose behaviour is a handler; records everything it receives."""

    def __init__(self, handler: Handler = echo, name: str = "b") -> None:
        self.handler = handler
        self.name = name
        self.requests: list[Request] = []
        self.received = bytearray()  # every byte of every connection, in arrival order
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        tap = _Tap(reader, self.received)
        try:
            while True:
                head = await _read_head(tap)  # type: ignore[arg-type]
                if head is None:
                    return
                line, headers = head
                method, target, version = line.split(" ", 2)
                cl, chunked = _framing(headers)
                if chunked:
                    body = await read_chunked(tap)  # type: ignore[arg-type]
                elif cl:
                    body = await tap.readexactly(cl)
                else:
                    body = b""
                req = Request(method, target, version, headers, body)
                self.requests.append(req)
                if not await self.handler(self, req, writer):
                    return
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[str]:
    """A raw server on 127.0.0.1 calling ``serve`` for each connection; yields its address, closed on exit."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


class _Tap:
    """A StreamReader wrapper recording what is read."""

    def __init__(self, reader: asyncio.StreamReader, sink: bytearray) -> None:
        self.reader = reader
        self.sink = sink

    async def readuntil(self, sep: bytes) -> bytes:
        data = await self.reader.readuntil(sep)
        self.sink += data
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.sink += data
        return data


class RawCapture:
    """A TCP server that records every byte it receives and never answers (proves nothing was forwarded)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> RawCapture:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.received += data
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def pause_reading(writer: asyncio.StreamWriter) -> None:
    """Stop reading from the writer's connection. Its transport reads too, but is typed as a write transport
    (and uvloop's is no ``asyncio.Transport`` subclass, so ``isinstance`` cannot narrow it)."""
    cast(asyncio.ReadTransport, writer.transport).pause_reading()


class Stalled(RawCapture):
    """Accepts connections and never reads from them (its kernel buffers fill, then the sender stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        pause_reading(writer)
        self.writers.append(writer)

    async def stop(self) -> None:
        for w in self.writers:
            w.transport.abort()
        await super().stop()


# -- handlers ----------------------------------------------------------------------------------


async def chunked(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
    w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (b"hello ", b"chunked ", b"world"):
        w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await w.drain()
    w.write(b"0\r\nX-Trailer: t\r\n\r\n")
    return True


def slow(delay: float) -> Handler:
    async def handler(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(delay)
        return await echo(backend, req, w)

    return handler


async def close_mid_response(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    await w.drain()
    return False


async def reset(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()
    return False


async def status(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
    code = int(req.target.strip("/") or 200)
    w.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % code)
    return True


def download(size: int, piece: int = 256 * 1024) -> Handler:
    """A Content-Length body of ``size`` zero bytes, written with backpressure."""

    async def handler(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = bytes(piece)
        left = size
        while left:
            n = min(left, piece)
            w.write(block[:n] if n < piece else block)
            left -= n
            await w.drain()
        return True

    return handler


# -- client ------------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    head = await _read_head(reader)
    if head is None:
        raise ConnectionError("connection closed before a response")
    line, headers = head
    status = int(line.split(" ")[1])
    cl, is_chunked = _framing(headers)
    if method == "HEAD" or status in (204, 304) or status < 200:
        body = b""
    elif is_chunked:
        body = await read_chunked(reader)
    elif cl is not None:
        body = await reader.readexactly(cl)
    else:
        body = await reader.read(-1)
    return Response(status, headers, body)


async def request(port: int, raw: bytes, method: str = "GET", timeout: float = 5.0) -> Response:
    """Send ``raw`` on a new connection and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(read_response(reader, method), timeout)
    finally:
        writer.close()


async def exchange_raw(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw`` and read until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()


AnyBackend = TypeVar("AnyBackend", bound="Backend | RawCapture")


@dataclass
class Backends:
    items: list[Backend | RawCapture] = field(default_factory=list)

    async def add(self, b: AnyBackend) -> AnyBackend:
        """Start ``b`` (stopped with the others at the end) and return it, as the type it was given."""
        await b.start()
        self.items.append(b)
        return b

    async def stop(self) -> None:
        for b in self.items:
            await b.stop()
