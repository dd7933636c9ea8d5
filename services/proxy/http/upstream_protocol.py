"""One connection to a backend: parses response heads and frames response bodies toward the client.

Lifecycle: connected -> (attached to a client exchange -> response read -> idle in the pool)* ->
closed. While idle, any byte from the backend or its close removes it from the pool: a connection
with unread bytes or that the backend marked ``close`` is never reused.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from services.proxy.balancer import Upstream
from services.proxy.http.parser import HEAD_END, ChunkedDecoder, HttpError, ResponseHead, parse_response_head

if TYPE_CHECKING:
    from services.proxy.context import Context
    from services.proxy.http.client_protocol import ClientConnection

MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_clean",
        "_decoder",
        "_method",
        "_remaining",
        "client",
        "closed",
        "ctx",
        "got_bytes",
        "head",
        "transport",
        "tunnel",
        "upstream",
    )

    def __init__(self, ctx: Context, upstream: Upstream) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.client: ClientConnection | None = None
        self.closed = False
        self.head: ResponseHead | None = None
        self._buf = b""
        self._method = b"GET"
        self._remaining = 0
        self._decoder: ChunkedDecoder | None = None
        self._clean = True  # no protocol surprise so far: may go back to the pool
        self.got_bytes = False  # any response byte for the current exchange
        self.tunnel = False

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=self.ctx.high_water)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.pool.discard(self.upstream.address, self)
        client = self.client
        if client is not None:
            self.client = None
            if self.tunnel:
                client.end_tunnel()
            elif self.head is not None and self.head.content_length is None and not self.head.chunked:
                client.response_end(self, reusable=False)  # body delimited by close: complete
            else:
                client.upstream_failed(self, exc)

    def eof_received(self) -> bool | None:
        if self.tunnel and self.client is not None:
            self.client.tunnel_peer_eof()
            return True
        return None  # close; connection_lost decides what it meant

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading("upstream")

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading("upstream")

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # idle: a backend must not speak unasked
            self._clean = False
            self.close()
            return
        if self.tunnel:
            client.send(data)
            return
        self.got_bytes = True
        head = self.head
        if head is None:
            buf = self._buf + data if self._buf else data
            end = buf.find(HEAD_END)
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self._protocol_error(client, HttpError(502, "response head too large"))
                else:
                    self._buf = buf
                return
            self._buf = b""
            try:
                head = parse_response_head(buf[:end], self._method)
            except HttpError as exc:
                self._protocol_error(client, exc)
                return
            data = buf[end + 4 :]
            if head.status < 200:
                req = client.req
                if head.status == 101 and req is not None and req.upgrade:
                    self.head = head
                    self.tunnel = True
                    client.response_head(self, head)
                    if data:
                        client.send(data)
                    return
                client.informational(head)  # 100 Continue and friends: relay, keep waiting
                if data:
                    self.data_received(data)
                return
            self.head = head
            self._remaining = head.content_length or 0
            if head.chunked:
                self._decoder = ChunkedDecoder(502, MAX_RESPONSE_HEAD)
            if not head.keep_alive:
                self._clean = False
            client.response_head(self, head)
            if self.client is None:
                return
            if head.content_length == 0:
                if data:
                    self._clean = False
                client.response_end(self, reusable=self._clean)
                return
            if not data:
                return
        # -- body
        if head.content_length is not None:
            remaining = self._remaining
            n = len(data)
            if n < remaining:
                self._remaining = remaining - n
                client.send(data)
                return
            if n > remaining:
                self._clean = False  # bytes beyond the response: never reuse
                data = data[:remaining]
            self._remaining = 0
            client.send(data)
            client.response_end(self, reusable=self._clean)
        elif self._decoder is not None:
            try:
                pieces, used = self._decoder.feed(data)
            except HttpError as exc:
                self._protocol_error(client, exc)
                return
            if pieces:
                client.send_pieces(pieces)
            if self._decoder.done:
                if used != len(data):
                    self._clean = False
                client.response_end(self, reusable=self._clean)
        else:
            client.send(data)

    # -- used by the client side ---------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        # Never pooled with request bytes still queued (a backend that answered before reading the
        # whole upload): the next request would follow the rest of this one.
        return (
            self._clean
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and self.transport.get_write_buffer_size() == 0
        )

    def begin(self, client: ClientConnection, method: bytes) -> None:
        self.client = client
        self.head = None
        self._buf = b""
        self._method = method
        self._decoder = None
        self.got_bytes = False

    def release(self) -> None:
        """The exchange is over: detach from the client (the caller pools or closes us)."""
        self.client = None

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def write_eof(self) -> None:
        if self.transport is not None and not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        self._clean = False
        self.client = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._clean = False
        self.client = None
        if self.transport is not None:
            self.transport.abort()

    def _protocol_error(self, client: ClientConnection, exc: HttpError) -> None:
        self.abort()
        client.upstream_bad_response(self, exc)
