"""One client connection in HTTP mode: bytes in, request heads out to its :class:`Exchange`.

State machine (one request at a time; pipelined bytes wait in ``buf``):

    HEAD ──head validated──► BODY ──body complete──► WAIT ──response complete──► HEAD (keep-alive)
      │                        │                       │                            or closed
      └─ error: 4xx + close    └─ framing error: 400   └─ 101 + Upgrade: TUNNEL (raw relay both ways)

* HEAD: a plain head that arrived whole is recognised by one match (``FAST_REQUEST``) and handed to
  the exchange as received; any other goes to the general path: bytes accumulate (each scanned
  once) until the blank line, then ``parse_request_head`` validates the whole head. Nothing is sent
  to a backend before the whole head has been validated.
* Deadlines, not timers: ``deadline`` is checked by the Context's sweep, and what it means follows
  from the state — HEAD with nothing received: idle (close); HEAD with part of a head: header read
  (408); waiting for a response head: response timeout (504); a body moving either way: a stall
  check every tick (the side that stopped is blamed: 408/504 or an abort once the response started).
"""

from __future__ import annotations

import asyncio
from typing import cast

from services.proxy.context import NEVER, Context
from services.proxy.flow import PEER_FULL, PIPELINE, QUEUED, ReadPauses
from services.proxy.http.errors import error_response
from services.proxy.http.exchange import Exchange
from services.proxy.http.headers import forwarding_prefix, new_request_id
from services.proxy.http.parser import HEAD_END, HttpError, check_incomplete_head, parse_request_head
from services.proxy.http.upstream import UpstreamConnection
from services.proxy.outbox import flush_first
from services.proxy.proxy_protocol import ProxyProtocolError, parse_proxy_header
from shared.logs import get_logger

log = get_logger("proxy.http")

HEAD, BODY, WAIT, TUNNEL, CLOSED, PROXY_HEADER = range(6)


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_eofs",
        "_in_at",
        "_in_mark",
        "_out_at",
        "_out_mark",
        "_partial",
        "_scanned",
        "buf",
        "client_ip",
        "ctx",
        "deadline",
        "eof",
        "ex",
        "outbox",
        "pauses",
        "plain",
        "prefix",
        "proto",
        "state",
        "transport",
        "write_blocked",
    )

    def __init__(self, ctx: Context, tls: bool = False) -> None:
        self.ctx = ctx
        self.outbox = ctx.outbox  # the hot path's queued writes: flushed before any direct write or close
        self.proto = b"https" if tls else b"http"
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.pauses = cast(ReadPauses, None)
        self.client_ip = ""
        self.prefix = b""  # the forwarding lines of every request of this connection
        self.state = HEAD
        # HEAD: a head arriving in several reads (a bytearray), or bytes after the last request not yet
        # read as the next one; WAIT: pipelined bytes.
        self.buf: bytes | bytearray = b""
        self._partial = False  # buf holds the start of a head (scanned up to _scanned)
        self._scanned = 0
        self.deadline = NEVER
        self.eof = False  # the client half-closed while its request was answered
        # After the current response, the connection simply goes back to reading heads: no pipelined
        # bytes, no read paused, no half-close, not the last request (one check on the hot path).
        self.plain = True
        self._eofs = 0  # tunnel: directions that saw EOF
        self.write_blocked = False  # our writes to the client are paused (it does not read)
        self._in_mark = self._out_mark = -1  # stall checks: byte counts at the last sweep that saw them move
        self._in_at = self._out_at = 0.0
        self.ex = Exchange(self)

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        self.pauses = ReadPauses(transport)
        transport.set_write_buffer_limits(high=self.ctx.high_water)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "unix"
        self.prefix = forwarding_prefix(self.client_ip, self.proto)
        ctx = self.ctx
        ctx.connections.add(self)
        ctx.stats.connections += 1
        self.deadline = ctx.now + ctx.client_idle
        if self.client_ip in ctx.proxy_protocol_from:  # a balancer in front: it says who the client is first
            self.state = PROXY_HEADER
            self.deadline = ctx.now + ctx.header_read

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.pauses.closed = True
        self.ctx.forget(self)
        self.ex.abort()

    def eof_received(self) -> bool | None:
        if self.outbox.items:  # (uvloop may close the transport on return: a queued response goes first)
            flush_first(self.outbox)
        state = self.state
        if state == TUNNEL:
            up = self.ex.up
            if up is not None:
                up.write_eof()
            self._tunnel_eof()
            return True
        if state == WAIT:
            self.eof = True
            self.plain = False
            return True  # half-closed client still gets its response, then the connection closes
        return None

    def pause_writing(self) -> None:
        self.write_blocked = True
        self.ex.client_blocked(True)

    def resume_writing(self) -> None:
        self.write_blocked = False
        self.ex.client_blocked(False)

    def data_received(self, data: bytes) -> None:
        if not self.state:  # HEAD (0): waiting for a request head
            if self.buf:  # part of a head, or pipelined bytes, came first
                self._read_head(data)
                return
            ctx = self.ctx
            plain = ctx.fast_scan(data, ctx.max_target, ctx.max_head)
            if plain is not None:
                self.state = WAIT
                if self.ex.start_fast(plain, len(data)):
                    return
                self.state = HEAD  # a route that the general path must take
            self._read_head(data)
            return
        state = self.state
        if state == BODY:
            used = self.ex.body(data)
            if used < len(data) and self.state != CLOSED:
                self.keep(data, used)
        elif state == WAIT:
            buf = self.buf
            if not isinstance(buf, bytearray):
                buf = self.buf = bytearray(buf)
            buf += data  # amortised: a bytearray grows in place
            self.plain = False
            if len(buf) > self.ctx.max_head:
                self.pause(PIPELINE)  # pipelined requests wait for the current response
        elif state == TUNNEL:
            up = self.ex.up
            if up is not None:
                up.transport.write(data)
        elif state == PROXY_HEADER:
            self._read_proxy_header(data)

    def _read_proxy_header(self, data: bytes) -> None:
        """The PROXY header (v1 or v2) a trusted balancer sends before anything else: its source address
        is the client's for the whole connection (X-Forwarded-For, logs, ip_hash). Bounded by the
        protocol's sizes; anything invalid closes the connection, as HAProxy does."""
        buf = self.buf = self.buf + data if self.buf else data
        try:
            parsed = parse_proxy_header(buf)
        except ProxyProtocolError as exc:
            log.debug("bad PROXY header", peer=self.client_ip, error=str(exc))
            self.abort()
            return
        if parsed is None:
            return
        address, length = parsed
        self.buf = b""
        if address is not None:
            self.client_ip = address.ip
            self.prefix = forwarding_prefix(self.client_ip, self.proto)
        self.state = HEAD
        self.deadline = self.ctx.now + self.ctx.client_idle
        if len(buf) > length:
            self.data_received(bytes(buf[length:]))

    # -- reading request heads (the general path) ---------------------------------------------

    def _read_head(self, data: bytes) -> None:
        """A head that did not arrive whole, is not plain, or follows another in the same bytes.

        Bytes that wait (part of a head, or pipelined requests) are kept in a bytearray: a head that
        arrives in pieces is scanned once (from where the last search stopped), and a request taken
        from the front of many pipelined ones is cut off in place (``del buf[:n]``, which CPython does
        without moving the rest): however the bytes come, each is copied and scanned a bounded number
        of times. The head is then validated by ``parse_request_head``."""
        buf: bytes | bytearray = self.buf
        if buf:
            if not isinstance(buf, bytearray):
                buf = bytearray(buf)
            buf += data
            start = max(0, self._scanned - 3) if self._partial else 0
        else:
            buf = data
            start = 0
        if not self._partial and buf[:2] == b"\r\n":  # RFC 9112 §2.2: ignore empty lines before a request
            skip = len(buf) - len(buf.lstrip(b"\r\n"))
            if isinstance(buf, bytearray):
                del buf[:skip]
            else:
                buf = buf[skip:]
            if not buf:
                self.buf = b""
                return
        ctx = self.ctx
        end = buf.find(HEAD_END, start)
        if end < 0:
            try:
                check_incomplete_head(buf, ctx.max_head, ctx.max_target)
            except HttpError as exc:
                self._reject(exc)
                return
            if not self._partial:
                self._partial = True
                self.deadline = ctx.now + ctx.header_read  # the whole head must come within this
            self.buf = buf if isinstance(buf, bytearray) else bytearray(buf)
            self._scanned = len(buf)
            return
        self._partial = False
        self.buf = b""
        if end + 4 > ctx.max_head:
            self._reject(HttpError(431, "request header section too large"))
            return
        head = bytes(buf[:end])
        if isinstance(buf, bytearray):
            del buf[: end + 4]
            rest: bytes | bytearray = buf
        else:
            rest = bytearray(memoryview(buf)[end + 4 :]) if len(buf) > end + 4 else b""
        try:
            req = parse_request_head(head, ctx.max_target)
        except HttpError as exc:
            self._reject(exc)
            return
        self.ex.start(req, rest, end + 4, head)

    def _reject(self, exc: HttpError) -> None:
        self.ctx.stats.error(exc.status)
        if self.state != CLOSED:
            self.write_now(error_response(exc.status, new_request_id(), close=True))
            self.close()

    # -- called by the exchange ----------------------------------------------------------------

    def pause(self, reason: int) -> None:
        """Pause reading this client (``flow`` reasons): the next response ends on the slow path,
        which resumes it."""
        self.plain = False
        self.pauses.pause(reason)

    def begin_body(self, uploading: bool) -> None:
        if uploading:
            self.state = BODY
            self._in_mark = -1  # not the previous upload's count
            self.deadline = self.ctx.now + self.ctx.tick  # watched for stalls
        else:
            self.state = WAIT

    def body_complete(self) -> None:
        if self.state == BODY:
            self.state = WAIT

    def keep(self, data: bytes | bytearray, used: int) -> None:
        """``data[used:]`` came after the current request: read once its response is complete."""
        if isinstance(data, bytearray):
            del data[:used]  # in place: the front of a bytearray is cut without moving the rest
        else:
            data = bytearray(memoryview(data)[used:])
        if self.buf:  # (pipelined bytes that arrived while the request body was still coming)
            data += self.buf
        self.buf = data
        self.plain = False

    def mark_progress(self) -> None:
        now = self.ctx.now
        self._out_mark, self._out_at = -1, now
        self._in_mark, self._in_at = -1, now

    def request_done(self) -> None:
        """The response went out whole and the connection stays: read the next request (the exchange
        does the same inline when the connection is ``plain``)."""
        ctx = self.ctx
        self.state = HEAD
        self.plain = not self.eof
        if self.pauses.reasons:
            self.pauses.resume(PIPELINE | PEER_FULL | QUEUED)
        if self.buf:
            # From the loop, not a direct call: a run of pipelined requests answered synchronously
            # (a 503, say) would otherwise nest one call per request and overflow the stack.
            self.deadline = ctx.now + ctx.header_read
            ctx.loop.call_soon(self._continue_pipeline)
        elif self.eof:
            self.close()  # a half-closed client with no request left
        else:
            self.deadline = ctx.now + ctx.client_idle

    def _continue_pipeline(self) -> None:
        if self.state == HEAD and self.buf and not self._partial:
            self._read_head(b"")
        if self.state == HEAD and self.eof and not self.buf:
            self.close()  # a half-closed client with no complete request left

    # -- tunnel --------------------------------------------------------------------------------

    def start_tunnel(self, up: UpstreamConnection) -> None:
        self.state = TUNNEL
        self.deadline = NEVER
        if self.buf:  # bytes after the upgrade request belong to the new protocol
            up.transport.write(self.buf)
            self.buf = b""
        self.pauses.resume(PIPELINE)

    def tunnel_peer_eof(self) -> None:
        if self.transport.can_write_eof():
            if self.outbox.items:
                flush_first(self.outbox)
            self.transport.write_eof()
            self._tunnel_eof()
        else:
            self.end_tunnel()

    def _tunnel_eof(self) -> None:
        self._eofs += 1
        if self._eofs == 2:  # both directions are done
            self.end_tunnel()

    def end_tunnel(self) -> None:
        """Both directions are done, or either side closed."""
        ex = self.ex
        up = ex.up
        ex.up = None
        if up is not None:
            up.close()  # close, not abort: what is still buffered for the backend goes out
        ex.finish_ok(0.0, 101)
        self.close()

    # -- deadlines (called by the Context's sweep) ---------------------------------------------

    def on_deadline(self, now: float) -> None:
        state = self.state
        ctx = self.ctx
        if state == PROXY_HEADER:
            self.abort()  # the balancer in front never said who the client is
        elif state == HEAD:
            if self.buf:
                self._reject(HttpError(408, "request header timeout"))
            else:
                self.close()  # idle keep-alive connection
        elif state in (BODY, WAIT):
            if state == WAIT and not self.ex.responded:  # the deadline was the response's
                self.ex.response_timeout()
            else:
                self._check_stall(now)
                if self.state == state:
                    self.deadline = now + ctx.tick
        else:
            self.deadline = NEVER

    def _check_stall(self, now: float) -> None:
        """A body transfer that has not moved for an idle timeout is cut."""
        ctx = self.ctx
        ex = self.ex
        if ex.responded:  # response body on its way to the client
            if ex.bytes_out != self._out_mark:
                self._out_mark, self._out_at = ex.bytes_out, now
            else:
                client = self.write_blocked  # it does not read: its fault, not the backend's
                if now - self._out_at >= (ctx.client_idle if client else ctx.backend_idle):
                    ex.stalled(client)
                    return
        if self.state == BODY and not ex.body_done:  # request body still coming
            if ex.bytes_in != self._in_mark:
                self._in_mark, self._in_at = ex.bytes_in, now
            else:
                backend = PEER_FULL in self.pauses  # the backend does not read what we forward
                if now - self._in_at >= (ctx.backend_idle if backend else ctx.client_idle):
                    ex.stalled(not backend)

    # -- closing -------------------------------------------------------------------------------

    def drain(self, grace: float) -> None:
        """Server stopping: finish the current exchange with ``Connection: close``; close when idle."""
        self.ex.last_response()
        if self.state == HEAD and not self.buf:
            # An idle keep-alive connection: a request already on its way still gets an answer
            # (with Connection: close) during a short grace, then the connection closes.
            self.deadline = self.ctx.now + grace

    def close(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.pauses.closed = True
        self.deadline = NEVER
        if self.outbox.items:  # a response queued this turn goes out before the close
            flush_first(self.outbox)
        self.transport.close()
        self.ex.abort()

    # -- writing at once (the hot path queues its writes instead: services/proxy/outbox.py) ---------

    def write_now(self, data: bytes) -> None:
        """Write to the client now; a response queued earlier in this turn goes first."""
        if self.outbox.items:
            flush_first(self.outbox)
        self.transport.write(data)

    def writelines_now(self, parts: list[bytes]) -> None:
        if self.outbox.items:
            flush_first(self.outbox)
        self.transport.writelines(parts)

    def abort(self) -> None:
        self.close()
        self.transport.abort()
