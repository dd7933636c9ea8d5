"""Real backends on 127.0.0.1 for the health tests: an HTTP server whose behaviour can be switched
(answer 200, answer 500, hang, close, alternate) and that can die (stop listening) and come back on
the same port."""

from __future__ import annotations

import asyncio
import ssl
from typing import Literal

Mode = Literal["ok", "error", "hang", "close", "alternate"]


class _Conn(asyncio.Protocol):
    def __init__(self, backend: HttpBackend) -> None:
        self.backend = backend
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.backend.connections.add(transport)
        if self.backend.mode == "close":
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.backend.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        self.backend.requests.append(self.buffer.split(b"\r\n\r\n", 1)[0])
        self.buffer = b""
        mode = self.backend.mode
        if mode == "alternate":
            mode = "ok" if len(self.backend.requests) % 2 else "error"
        if mode == "hang":
            return
        if mode == "close":
            self.transport.close()
            return
        status, body = ("200 OK", self.backend.body) if mode == "ok" else ("500 Internal Server Error", b"broken")
        self.transport.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        self.transport.close()


class HttpBackend:
    def __init__(self, mode: Mode = "ok", body: bytes = b"ok", ssl_context: ssl.SSLContext | None = None) -> None:
        self.mode: Mode = mode
        self.body = body
        self.ssl = ssl_context
        self.port = 0
        self.requests: list[bytes] = []
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> HttpBackend:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Conn(self), "127.0.0.1", self.port, ssl=self.ssl, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def die(self) -> None:
        """Stop listening and drop every connection: new connects are refused."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self.connections):
            transport.abort()
        self.connections.clear()

    async def revive(self) -> None:
        await self.start()

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode != "hang":
            for transport in list(self.connections):  # release connections held by an earlier hang
                transport.abort()
