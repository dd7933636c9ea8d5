"""One connection to a backend: reads response heads and frames response bodies toward the client.

Lifecycle: connected -> (attached to an exchange -> response read -> idle in the pool)* -> closed.
While idle, any byte from the backend or its close removes it from the pool: a connection with
unread bytes, or that the backend marked ``close``, is never reused.

Reading a response:

    HEAD ──plain head + whole body in one read (fast.response)──► done (complete_fast)
      │──head parsed (general path)──► 1xx: relayed, back to HEAD (at most MAX_INTERIM, then 502)
      │                                101 to an upgrade request: TUNNEL; to any other: 502
      │                                final: BODY (Content-Length, chunked, or until close)
      └──invalid head / too large──► 502 (bad_response)
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from services.proxy.balancer import Upstream
from services.proxy.http.fast import response as fast_response
from services.proxy.http.headers import VIA
from services.proxy.http.parser import (
    HEAD_END,
    MAX_INTERIM,
    ChunkedDecoder,
    HttpError,
    ResponseHead,
    parse_response_head,
)
from services.proxy.stats import BackendStats

if TYPE_CHECKING:
    from services.proxy.context import Context
    from services.proxy.http.exchange import Exchange

MAX_RESPONSE_HEAD = 64 * 1024
VIA_END = b"\r\nVia: " + VIA + b"\r\n\r\n"  # how a fast-path response head ends for the client
VIA_CLOSE_END = b"\r\nVia: " + VIA + b"\r\nConnection: close\r\n\r\n"  # ... on the connection's last one
# What the connection is reading. HEAD (0, so one truth test): a response head, where the fast path
# applies; GENERAL: a head for an exchange that is not plain (``Exchange.fast`` is False).
HEAD, PARTIAL_HEAD, BODY, TUNNEL, GENERAL = range(5)


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_clean",
        "_decoder",
        "_interim",
        "_remaining",
        "_scanned",
        "address",
        "closed",
        "ctx",
        "ex",
        "got_bytes",
        "head",
        "idle_since",
        "reading",
        "stats",
        "tally",
        "transport",
        "upstream",
    )

    def __init__(self, ctx: Context, upstream: Upstream) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.address = upstream.address
        # This backend's counters (a detached, never-read set when metrics are off: nothing is counted).
        self.stats = ctx.stats.backend(upstream.address) if ctx.metrics_on else BackendStats()
        self.tally = self.stats.whole  # (what the fast path counts into: stats.tally)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.ex: Exchange | None = None
        self.closed = False
        self.head: ResponseHead | None = None  # the current response's head once read (general path)
        self._buf: bytearray | None = None  # a response head arriving in several reads
        self._scanned = 0
        self.reading = HEAD
        self._remaining = 0
        self._interim = 0  # 1xx responses relayed for the current request
        self._decoder: ChunkedDecoder | None = None
        self._clean = True  # no protocol surprise so far: may go back to the pool
        self.got_bytes = False  # any response byte for the current exchange (general path)
        self.idle_since = 0.0

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=self.ctx.high_water)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.pool.discard(self.upstream.address, self)
        ex = self.ex
        if ex is not None:
            self.ex = None
            if self.reading == TUNNEL:
                ex.conn.end_tunnel()
            elif self.head is not None and self.head.content_length is None and not self.head.chunked:
                ex.response_end(self, reusable=False)  # body delimited by close: complete
            else:
                ex.upstream_failed(self)

    def eof_received(self) -> bool | None:
        if self.reading == TUNNEL and self.ex is not None:
            self.ex.conn.tunnel_peer_eof()
            return True
        return None  # close; connection_lost decides what it meant

    def pause_writing(self) -> None:
        if self.ex is not None:
            self.ex.upstream_full(True)

    def resume_writing(self) -> None:
        if self.ex is not None:
            self.ex.upstream_full(False)

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # idle: a backend must not speak unasked
            self._clean = False
            self.close()
            return
        if self.reading:
            self._slow(ex, data)
            return
        # The fast path: a plain head and, most often, the whole body in this one read.
        plain = fast_response(data, ex.via_end)
        if plain is None:
            self._read_head(ex, data)
            return
        status, out, missing, body_at = plain
        if not missing:
            ex.complete_fast(self, status, out)
        else:
            self._fast_partial(ex, status, out, missing, data, body_at)

    def _fast_partial(self, ex: Exchange, status: int, out: bytes, missing: int, data: bytes, body_at: int) -> None:
        """A fast-path head with less (or more) than its whole body in this read (see fast.response)."""
        if missing < 0:  # bytes beyond the response: relayed up to the length, the connection not reused
            ex.complete_fast_dirty(self, status, out)
            return
        self.got_bytes = True
        body = data[body_at:]
        self._start_body(ex, ResponseHead(1, status, b"", len(body) + missing, False, True), body, out)

    def _slow(self, ex: Exchange, data: bytes) -> None:
        reading = self.reading
        if reading == GENERAL:
            self.reading = HEAD
            self._read_head(ex, data)
        elif reading == TUNNEL:
            ex.send(data)
        elif reading == BODY:
            self._body(ex, data)
        else:
            self._read_head(ex, data)

    # -- the general path ----------------------------------------------------------------------

    def _read_head(self, ex: Exchange, data: bytes) -> None:
        """Accumulate a response head (linear: each byte is scanned once), then parse it; 1xx heads
        are relayed in a loop, not by recursion, and at most MAX_INTERIM of them."""
        self.got_bytes = True
        while True:
            buf: bytes | bytearray
            if self._buf is None:
                buf = data
                start = 0
            else:
                self._buf += data
                buf = self._buf
                start = max(0, self._scanned - 3)
            end = buf.find(HEAD_END, start)
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self._protocol_error(ex, HttpError(502, "response head too large"))
                    return
                if self._buf is None:
                    self._buf = bytearray(data)
                self._scanned = len(buf)
                self.reading = PARTIAL_HEAD
                return
            raw = bytes(buf[:end])
            data = bytes(buf[end + 4 :])
            self._buf = None
            self.reading = HEAD
            if end > MAX_RESPONSE_HEAD:
                self._protocol_error(ex, HttpError(502, "response head too large"))
                return
            try:
                head = parse_response_head(raw, ex.request_method())
            except HttpError as exc:
                self._protocol_error(ex, exc)
                return
            if head.status >= 200:
                self._start_body(ex, head, data, None)
                return
            if head.status == 101:
                req = ex.req
                if req is None or not req.upgrade:
                    self._protocol_error(ex, HttpError(502, "101 Switching Protocols to a request without Upgrade"))
                    return
                self.head = head
                self.reading = TUNNEL
                ex.response_head(self, head)
                if data:
                    ex.send(data)
                return
            self._interim += 1  # per response, whatever the reads they came in
            if self._interim > MAX_INTERIM:
                self._protocol_error(ex, HttpError(502, "too many interim responses"))
                return
            ex.informational(head)  # 100 Continue and friends: relay, keep waiting
            self.reading = GENERAL  # the final response: general path (got_bytes, body still uploading, HEAD, 1.0)
            if not data:
                return

    def _start_body(self, ex: Exchange, head: ResponseHead, data: bytes, fast_head: bytes | None) -> None:
        self.head = head
        self.reading = BODY
        self._remaining = head.content_length or 0
        if head.chunked:
            self._decoder = ChunkedDecoder(502, MAX_RESPONSE_HEAD)
        if not head.keep_alive:
            self._clean = False
        ex.response_head(self, head, fast_head)
        if self.ex is None:
            return
        if head.content_length == 0:
            if data:
                self._clean = False
            self._complete(ex)
            return
        if data:
            self._body(ex, data)

    def _body(self, ex: Exchange, data: bytes) -> None:
        self.got_bytes = True
        head = self.head
        assert head is not None
        if head.content_length is not None:
            remaining = self._remaining
            n = len(data)
            if n < remaining:
                self._remaining = remaining - n
                ex.send(data)
                return
            if n > remaining:
                self._clean = False  # bytes beyond the response: never reuse
                data = data[:remaining]
            self._remaining = 0
            ex.send(data)
            self._complete(ex)
        elif self._decoder is not None:
            try:
                pieces, used = self._decoder.feed(data)
            except HttpError as exc:
                self._protocol_error(ex, exc)
                return
            if pieces:
                ex.send_pieces(pieces)
            if self._decoder.done:
                if used != len(data):
                    self._clean = False
                self._complete(ex)
        else:
            ex.send(data)

    def _complete(self, ex: Exchange) -> None:
        self.head = None
        self._decoder = None
        self._interim = 0
        self.reading = HEAD
        self.got_bytes = False
        ex.response_end(self, reusable=self._clean)

    # -- used by the exchange ------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        # Never pooled with request bytes still queued (a backend that answered before reading the
        # whole upload): the next request would follow the rest of this one.
        return self._clean and not self.closed and self.transport.get_write_buffer_size() == 0

    def begin(self, ex: Exchange) -> None:
        """Attach to an exchange (the reading state is clean: a completed response reset it)."""
        self.ex = ex
        if not ex.fast:
            self.reading = GENERAL

    def fast_again(self) -> None:
        """The exchange became plain (its request body is complete) before any response byte."""
        if self.reading == GENERAL and not self.got_bytes:
            self.reading = HEAD

    @property
    def tunnel(self) -> bool:
        return self.reading == TUNNEL

    def write_eof(self) -> None:
        if not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        self._clean = False
        self.ex = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._clean = False
        self.ex = None
        if self.transport is not None:
            self.transport.abort()

    def _protocol_error(self, ex: Exchange, exc: HttpError) -> None:
        self.abort()
        ex.bad_response(self, exc)
