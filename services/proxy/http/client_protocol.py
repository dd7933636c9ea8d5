"""One client connection in HTTP mode.

State machine (one request at a time; pipelined bytes wait in ``buf``):

    HEAD ──head validated──► BODY ──body complete──► WAIT ──response complete──► HEAD (keep-alive)
      │                        │                       │                            or closed
      └─ error: 4xx + close    └─ framing error: 400   └─ 101 + Upgrade: TUNNEL (raw relay both ways)

* HEAD: bytes accumulate until the blank line; the idle timer runs while ``buf`` is empty, the
  header timer (→408) once a byte of the head arrived. Nothing is sent to a backend before the
  whole head has been validated by ``parse_request_head``.
* BODY/WAIT: an exchange is open with one attempt at a time against an upstream. Until the
  upstream connection is attached, request bytes queue in ``pending`` (bounded by the high-water
  mark: reading pauses beyond it). Body bytes already in the buffer are decoded before the first
  attempt, so a request whose framing is invalid in the bytes received with its head is refused
  with nothing forwarded.
* Attempts: a connect failure is always retried on another backend; a failure after the request
  was written but before any response byte is retried once more only for an idempotent request
  without a body; both within ``proxy.retries`` and the retry budget. Once a response byte
  reached the client, a failure can only abort the client connection.
* Backpressure: the upstream transport's pause/resume_writing pauses/resumes reading this client
  (reason "upstream"); this transport's pause/resume_writing pauses/resumes reading the upstream.
* Stalls: a body transfer (request body up, response body down) that makes no progress for an idle
  timeout is cut (``check_stall``, called by the Context's periodic sweep). The side blamed is the
  one that stopped: a backend that stops sending (``backend_idle_sec``: 504 if nothing of the response
  reached the client yet, else the client connection is aborted — a truncated response), a client
  that stops sending its body or reading the response (``client_idle_sec``: 408 / abort). A side
  held back by backpressure from the other is not the one stalling.
* Observability: each exchange ends once (``_end_exchange``): bytes per backend, the access-log line
  and the OTLP span; each attempt's outcome is counted per backend in ``_finish_attempt``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from services.proxy.balancer import Outcome, Upstream
from services.proxy.context import Context
from services.proxy.http.errors import error_response
from services.proxy.http.headers import client_response_head, new_request_id, upstream_request_head
from services.proxy.http.parser import (
    HEAD_END,
    LAST_CHUNK,
    ChunkedDecoder,
    HttpError,
    RequestHead,
    ResponseHead,
    check_incomplete_head,
    frame_chunks,
    parse_request_head,
)
from services.proxy.http.upstream_protocol import UpstreamProtocol
from services.proxy.observability.access_log import iso_time
from services.proxy.observability.tracing import TraceContext, continue_or_start
from shared.logs import get_logger

log = get_logger("proxy.http")

HEAD, BODY, WAIT, TUNNEL, CLOSED = range(5)
# Durations (latency, time to first byte) are measured with perf_counter: uvloop's loop.time() is in
# whole milliseconds, cached per loop iteration — too coarse for sub-millisecond backends.
_clock = time.perf_counter
_IDLE, _HEADER, _RESPONSE = range(3)  # what the single timer is waiting for
# A response head and body (or several body pieces) up to this size are joined into one write (one
# send()); beyond it they go as writelines, not copied.
JOIN_MAX = 65536


class ClientConnection(asyncio.Protocol):
    def __init__(self, ctx: Context, tls: bool = False) -> None:
        self.ctx = ctx
        self.proto = b"https" if tls else b"http"
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.state = HEAD
        self.buf = b""
        self._paused: set[str] = set()
        self._eof = False
        self._eofs = 0  # tunnel: directions that saw EOF
        # timer: one handle, deadline moved lazily
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._timer_kind = _IDLE
        self._client_blocked = False  # our writes to the client are paused (it does not read)
        self._open = False  # an exchange started and not yet ended (_end_exchange)
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.req: RequestHead | None = None
        self.rid = b"-"
        self.up: UpstreamProtocol | None = None
        self.upstream: Upstream | None = None
        self.tried: list[str] = []
        self.attempts = 0
        self.resent = False
        self.head_out = b""
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.body_remaining = 0
        self.decoder: ChunkedDecoder | None = None
        self.body_done = True
        self.responded = False  # response bytes written to the client
        self.keep_alive = False
        self.rechunk = False
        self.resp_head: bytes | None = None
        self.started_at = 0.0
        self.body_seen = 0
        self.connecting: asyncio.Task[None] | None = None
        # observability of this exchange
        self.bytes_in = 0  # request bytes from the client (head + body framing)
        self.bytes_out = 0  # response bytes to the client
        self.t0 = 0.0  # _clock() when the first attempt started
        self.ttfb: float | None = None  # current attempt: start -> response head
        self.upstream_sec = 0.0  # last finished attempt's duration
        self.resp_status = 0  # status sent to the client (backend's or the proxy's own)
        self.backend_addr = ""  # last backend tried
        self.trace: TraceContext | None = None
        self._in_mark = -1  # stall checks: byte counts at the last sweep that saw them move
        self._in_at = 0.0
        self._out_mark = -1
        self._out_at = 0.0

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=self.ctx.high_water)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "unix"
        self.ctx.connections.add(self)
        self.ctx.stats.connections += 1
        self._set_timer(_IDLE, self.ctx.client_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.ctx.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.connecting is not None:
            self.connecting.cancel()
        up = self.up
        if up is not None:
            self.up = None
            up.abort()
        # The client went away mid-exchange: not the backend's fault.
        self._finish_attempt(Outcome(ok=True, status=self.resp_status or None))
        if self._open:
            self._end_exchange()

    def eof_received(self) -> bool | None:
        if self.state == TUNNEL:
            if self.up is not None:
                self.up.write_eof()
            self._tunnel_eof()
            return True
        if self.state == WAIT:
            self._eof = True
            return True  # half-closed client still gets its response, then the connection closes
        return None

    def pause_writing(self) -> None:
        self._client_blocked = True
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        self._client_blocked = False
        if self.up is not None:
            self.up.resume_reading()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == TUNNEL:
            if self.up is not None:
                self.up.write(data)
            return
        if state == BODY:
            self._body(data)
            return
        self.buf = self.buf + data if self.buf else data
        if state == HEAD:
            self._next_request()
        elif state == WAIT and len(self.buf) > self.ctx.max_head:
            self.pause_reading("pipeline")  # pipelined requests wait for the current response

    # -- reading requests ----------------------------------------------------------------------

    def _continue_pipeline(self) -> None:
        if self.state == HEAD and self.buf:
            self._next_request()

    def _next_request(self) -> None:
        buf = self.buf
        if buf[:2] == b"\r\n":  # RFC 9112 §2.2: ignore empty lines before a request line
            buf = buf.lstrip(b"\r\n")
            self.buf = buf
        if not buf:
            self._set_timer(_IDLE, self.ctx.client_idle)
            return
        end = buf.find(HEAD_END)
        if end < 0:
            try:
                check_incomplete_head(buf, self.ctx.max_head, self.ctx.max_target)
            except HttpError as exc:
                self._reject(exc)
                return
            if self._timer_kind != _HEADER:
                self._set_timer(_HEADER, self.ctx.header_read)
            return
        if end + 4 > self.ctx.max_head:
            self._reject(HttpError(431, "request header section too large"))
            return
        try:
            req = parse_request_head(buf[:end], self.ctx.max_target)
        except HttpError as exc:
            self._reject(exc)
            return
        rest = buf[end + 4 :]
        self.buf = b""
        self.bytes_in = end + 4
        self._start(req, rest)

    def _reject(self, exc: HttpError) -> None:
        self.ctx.stats.error(exc.status)
        rid = new_request_id()
        self._send_error(exc.status, rid, close=True)

    def _send_error(self, status: int, rid: bytes, *, close: bool) -> None:
        if self.transport is None or self.state == CLOSED:
            return
        minor = self.req.minor if self.req is not None else 1
        response = error_response(status, rid, close=close, minor=minor)
        self.transport.write(response)
        self.bytes_out += len(response)
        self.resp_status = status
        if close:
            self._close()

    def _start(self, req: RequestHead, rest: bytes) -> None:
        ctx = self.ctx
        ctx.stats.requests += 1
        ctx.budget.deposit()
        self.req = req
        self.rid = req.request_id or new_request_id()
        self._open = True
        if ctx.propagate_trace:
            self.trace = continue_or_start(req.traceparent, ctx.sample_ratio)
        if ctx.max_body and req.content_length is not None and req.content_length > ctx.max_body:
            ctx.stats.error(413)
            self._send_error(413, self.rid, close=True)
            return
        self.keep_alive = req.keep_alive and not ctx.draining
        self.head_out = self._request_head(req, b"")
        self.pending = [self.head_out]
        self.pending_size = len(self.head_out)
        self.body_done = not req.has_body
        self.body_remaining = req.content_length or 0
        self.decoder = ChunkedDecoder(400, ctx.max_head) if req.chunked else None
        self.body_seen = 0
        self.state = BODY if not self.body_done else WAIT
        if rest:
            if self.body_done:
                self.buf = rest
            else:
                self._body(rest)
                if self.state == CLOSED:
                    return  # invalid framing in what came with the head: nothing was forwarded
        if self.body_done:
            self._set_timer(_RESPONSE, ctx.response_timeout)
        else:
            self._set_timer(_IDLE, 1e9)  # uploading: the response deadline starts when the body is complete
        self._attempt()

    def _body(self, data: bytes) -> None:
        """Request body bytes: frame-check, then forward (or queue until an upstream is attached)."""
        if self.decoder is not None:
            try:
                pieces, used = self.decoder.feed(data)
            except HttpError as exc:
                self._body_error(exc)
                return
            self.body_seen += sum(len(p) for p in pieces)
            self.bytes_in += used
            if self.ctx.max_body and self.body_seen > self.ctx.max_body:
                self._body_error(HttpError(413, "request body too large"))
                return
            out = frame_chunks(pieces)
            if self.decoder.done:
                out.append(LAST_CHUNK)
                self._body_complete(data[used:])
            if out:
                self._forward(out)
        else:
            remaining = self.body_remaining
            if len(data) <= remaining:
                self.bytes_in += len(data)
                self.body_remaining = remaining - len(data)
                self._forward([data])
                if self.body_remaining == 0:
                    self._body_complete(b"")
            else:
                self.bytes_in += remaining
                self.body_remaining = 0
                self._forward([data[:remaining]])
                self._body_complete(data[remaining:])

    def _body_complete(self, rest: bytes) -> None:
        self.body_done = True
        if self.state == BODY:
            self.state = WAIT
            if not self.responded:
                self._set_timer(_RESPONSE, self.ctx.response_timeout)
        if rest:
            self.buf = rest + self.buf if self.buf else rest

    def _abandon_upstream(self, outcome: Outcome) -> None:
        """Drop the exchange with the backend (connected or still connecting) and report ``outcome``."""
        up = self.up
        self.up = None
        if up is not None:
            up.abort()
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self._finish_attempt(outcome)

    def _body_error(self, exc: HttpError) -> None:
        # Whatever part of the body was forwarded, the upstream exchange is unusable now.
        self._abandon_upstream(Outcome(ok=True))
        self.ctx.stats.error(exc.status)
        if self.responded:
            self._close()
        else:
            self._send_error(exc.status, self.rid, close=True)

    def _forward(self, chunks: list[bytes]) -> None:
        up = self.up
        if up is not None and self.connecting is None:
            up.writelines(chunks)
            return
        for c in chunks:
            self.pending.append(c)
            self.pending_size += len(c)
        if self.pending_size > self.ctx.high_water:
            self.pause_reading("upstream")

    # -- attempts ------------------------------------------------------------------------------

    def _affinity_key(self, header: bytes | None, cookie: bytes | None) -> str:
        req = self.req
        if req is not None and header is not None:
            for name, value in req.headers:
                if name.lower() == header and value:
                    return value.decode("latin-1")
        elif req is not None and cookie is not None:
            prefix = cookie + b"="
            for name, value in req.headers:
                if name.lower() == b"cookie":
                    for part in value.split(b";"):
                        part = part.strip()
                        if part.startswith(prefix) and len(part) > len(prefix):
                            return part[len(prefix) :].decode("latin-1")
        return self.client_ip

    def _attempt(self) -> None:
        ctx = self.ctx
        self.attempts += 1
        header, cookie = ctx.key_source()
        key = self.client_ip if header is None and cookie is None else self._affinity_key(header, cookie)
        upstream = ctx.balancer.pick(key, self.tried)
        if upstream is None:
            status = 503 if not self.tried else 502
            self._fail(status)
            return
        self.tried.append(upstream.address)
        self.upstream = upstream
        self.backend_addr = upstream.address
        req = self.req
        if req is not None and req.host is None and self.pending and self.pending[0] is self.head_out:
            # HTTP/1.0 without Host: the backend gets its own address as Host.
            head = self._request_head(req, upstream.address.encode())
            self.pending_size += len(head) - len(self.head_out)
            self.pending[0] = self.head_out = head
        self.started_at = now = _clock()
        if self.attempts == 1:
            self.t0 = now
        self.ttfb = None
        conn = ctx.pool.get(upstream.address)
        if conn is not None:
            assert isinstance(conn, UpstreamProtocol)
            ctx.stats.pool_hits += 1
            self._attach(conn)
        else:
            ctx.stats.pool_misses += 1
            self.connecting = ctx.loop.create_task(self._connect(upstream))

    def _request_head(self, req: RequestHead, host: bytes) -> bytes:
        """The head sent upstream; ``host``: the Host given to a request without one."""
        trace = self.trace
        return upstream_request_head(
            req,
            self.client_ip,
            self.proto,
            self.rid,
            host,
            req.upgrade,
            trace.header() if trace is not None else None,
            trace is None or trace.tracestate_kept,
        )

    async def _connect(self, upstream: Upstream) -> None:
        ctx = self.ctx
        try:
            _, proto = await asyncio.wait_for(
                ctx.loop.create_connection(lambda: UpstreamProtocol(ctx, upstream), upstream.host, upstream.port),
                ctx.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            self.connecting = None
            if self.state != CLOSED:
                self._connect_failed(upstream, exc)
            return
        self.connecting = None
        assert isinstance(proto, UpstreamProtocol)
        if self.state == CLOSED:
            proto.close()
            return
        self._attach(proto)

    def _connect_failed(self, upstream: Upstream, exc: BaseException) -> None:
        ctx = self.ctx
        ctx.count_connect_failure(upstream.address)
        self._finish_attempt(Outcome(ok=False, connect_failed=True))
        log.debug("connect failed", upstream=upstream.address, error=str(exc) or type(exc).__name__)
        if self.attempts <= ctx.retries and ctx.budget.withdraw():
            ctx.count_retry(upstream.address)
            self._attempt()
        else:
            self._fail(502)

    def _attach(self, up: UpstreamProtocol) -> None:
        assert self.req is not None
        self.up = up
        up.begin(self, self.req.method)
        # Paused for writing means paused until resume_writing, even once the buffer has drained below
        # the high-water mark: no other pause_writing will come to stop a fresh upstream.
        if self._client_blocked or (
            self.transport is not None and self.transport.get_write_buffer_size() > self.ctx.high_water
        ):
            up.pause_reading()
        pending = self.pending
        if pending:
            up.writelines(pending)
            self.pending = []
            self.pending_size = 0
            buffered = up.transport.get_write_buffer_size() if up.transport is not None else 0
            if "upstream" in self._paused and buffered <= self.ctx.high_water:
                self.resume_reading("upstream")

    def upstream_failed(self, up: UpstreamProtocol, exc: Exception | None) -> None:
        """The backend closed or reset the connection before the response was complete."""
        if up is not self.up or self.state == CLOSED:
            return
        self.up = None
        ctx = self.ctx
        self._finish_attempt(Outcome(ok=False, latency=None))
        req = self.req
        assert req is not None
        if self.responded or up.got_bytes:
            self._close()  # part of a response went out: the client sees a truncated message
            return
        # Nothing of a response: retry once more if it is safe to send the request again.
        if (
            req.idempotent
            and not req.has_body
            and not self.resent
            and self.attempts <= ctx.retries
            and ctx.budget.withdraw()
        ):
            self.resent = True
            ctx.count_retry(up.upstream.address)
            self.pending = [self.head_out]
            self.pending_size = len(self.head_out)
            self._attempt()
            return
        self._fail(502)

    def upstream_bad_response(self, up: UpstreamProtocol, exc: HttpError) -> None:
        if up is not self.up:
            return
        self.up = None
        self._finish_attempt(Outcome(ok=False))
        log.debug("bad response from backend", upstream=up.upstream.address, error=exc.reason)
        if self.resp_head is not None:  # refused before any of it reached the client: a clean 502
            self.resp_head = None
            self.responded = False
            self.keep_alive = False
        if self.responded:
            self._close()
        else:
            self._fail(exc.status)

    def _fail(self, status: int) -> None:
        """The proxy answers the current request itself (502/503/504)."""
        self.ctx.stats.error(status)
        if self.responded:
            self._close()
            return
        close = not (self.keep_alive and self.body_done)
        self._send_error(status, self.rid, close=close)
        if not close:
            self._exchange_done()

    def _finish_attempt(self, outcome: Outcome) -> None:
        """The current attempt (if any) is over: report ``outcome`` for its upstream."""
        upstream = self.upstream
        if upstream is None:
            return
        self.upstream = None
        ctx = self.ctx
        ctx.balancer.finished(upstream, outcome)
        duration = outcome.latency
        if duration is None:
            duration = _clock() - self.started_at
        self.upstream_sec = duration
        if ctx.metrics_on:
            ctx.stats.backend(upstream.address).finished(outcome.status, duration, self.ttfb)

    def _end_exchange(self) -> None:
        """Once per request, however it ended: bytes per backend, access-log line, span."""
        self._open = False
        ctx = self.ctx
        if ctx.metrics_on and self.backend_addr:
            b = ctx.stats.backend(self.backend_addr)
            b.request_bytes += self.bytes_in
            b.response_bytes += self.bytes_out
        access_log = ctx.access_log
        trace = self.trace
        export = ctx.exporter is not None and trace is not None and trace.sampled
        if (access_log is None or not access_log.sampled()) and not export:
            return
        now = _clock()
        t0 = self.t0 or now
        total = now - t0
        wall = time.time()
        req = self.req
        method = req.method.decode("latin-1") if req is not None else "-"
        target = req.target.decode("latin-1") if req is not None else "-"
        if access_log is not None:
            access_log.write(
                {
                    "time": iso_time(wall),
                    "client": self.client_ip,
                    "method": method,
                    "target": target,
                    "status": self.resp_status or None,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                    "duration_ms": round(total * 1000.0, 3),
                    "upstream_ms": round(self.upstream_sec * 1000.0, 3) if self.backend_addr else None,
                    "backend": self.backend_addr or None,
                    "attempts": self.attempts,
                    "request_id": self.rid.decode("latin-1"),
                    "trace_id": trace.trace_id.decode() if trace is not None else None,
                }
            )
        if export and ctx.exporter is not None and trace is not None:
            attributes: dict[str, Any] = {
                "http.request.method": method,
                "url.path": target,
                "client.address": self.client_ip,
                "gobalancer.request_id": self.rid.decode("latin-1"),
                "gobalancer.attempts": self.attempts,
            }
            if self.resp_status:
                attributes["http.response.status_code"] = self.resp_status
            if self.backend_addr:
                attributes["gobalancer.backend"] = self.backend_addr
            ctx.exporter.export(trace, wall - total, total, attributes, not self.resp_status or self.resp_status >= 500)

    # -- responses (called by UpstreamProtocol) ------------------------------------------------

    def informational(self, head: ResponseHead) -> None:
        if self.req is not None and self.req.minor >= 1 and self.transport is not None:
            self.transport.write(client_response_head(head, 1, True, rechunk=False, tunnel=False))

    def response_head(self, up: UpstreamProtocol, head: ResponseHead) -> None:
        req = self.req
        assert req is not None and self.transport is not None
        self.resp_status = head.status
        self.ttfb = _clock() - self.started_at
        if self._timer_kind == _RESPONSE:
            self._set_timer(_IDLE, 1e9)  # body transfer: no deadline (idle timer re-armed after)
        tunnel = up.tunnel
        if tunnel:
            self.state = TUNNEL
            self.ctx.stats.tunnels += 1
            self.keep_alive = False
            if self.buf:  # bytes after the upgrade request belong to the new protocol
                up.write(self.buf)
                self.buf = b""
            if "pipeline" in self._paused:
                self.resume_reading("pipeline")
        else:
            if head.content_length is None and not head.chunked:
                self.keep_alive = False  # body ends with the backend's close
            elif head.chunked and req.minor == 0:
                self.keep_alive = False  # 1.0 client: send decoded, delimited by close
        self.rechunk = head.chunked and req.minor >= 1
        self.responded = True
        out = client_response_head(head, req.minor, self.keep_alive, self.rechunk, tunnel)
        if tunnel:
            self.bytes_out += len(out)
            self.transport.write(out)
        else:
            self.resp_head = out  # written together with the first body bytes: one send() instead of two

    def send(self, data: bytes) -> None:
        if self.transport is None:
            return
        head = self.resp_head
        if head is not None:
            self.resp_head = None
            self.bytes_out += len(head) + len(data)
            if len(data) <= JOIN_MAX:
                self.transport.write(head + data)
            else:
                self.transport.writelines([head, data])
            return
        self.bytes_out += len(data)
        self.transport.write(data)

    def send_pieces(self, pieces: list[bytes]) -> None:
        if self.transport is None:
            return
        out: list[bytes] = []
        if self.resp_head is not None:
            out.append(self.resp_head)
            self.resp_head = None
        if self.rechunk:
            out += frame_chunks(pieces)
        else:
            out += pieces
        size = sum(map(len, out))
        self.bytes_out += size
        if size <= JOIN_MAX:
            self.transport.write(b"".join(out))
        else:
            self.transport.writelines(out)

    def response_end(self, up: UpstreamProtocol, reusable: bool) -> None:
        if up is not self.up:
            return
        ctx = self.ctx
        self.up = None
        up.release()
        ctx.stats.responses += 1
        if self.transport is not None:
            tail = LAST_CHUNK if self.rechunk else b""
            if self.resp_head is not None:
                tail = self.resp_head + tail
                self.resp_head = None
            if tail:
                self.bytes_out += len(tail)
                self.transport.write(tail)
        status = self.resp_status
        latency = _clock() - self.started_at
        self._finish_attempt(Outcome(ok=status < 500, latency=latency, status=status))
        if reusable and self.body_done:
            up.resume_reading()
            ctx.pool.put(up.upstream.address, up)
        else:
            up.close()
        if not self.body_done:
            self.keep_alive = False  # the rest of the request body would have to be read first
        self._exchange_done()

    def _exchange_done(self) -> None:
        if self._open:
            self._end_exchange()
        # A client that half-closed after pipelining still gets answers to its complete requests.
        if not self.keep_alive or self.state == CLOSED or (self._eof and HEAD_END not in self.buf):
            self._close()
            return
        self._reset_exchange()
        self.state = HEAD
        if "pipeline" in self._paused:
            self.resume_reading("pipeline")
        if "upstream" in self._paused:
            self.resume_reading("upstream")
        if self.buf:
            # From the loop, not a direct call: a run of pipelined requests answered synchronously
            # (a 503, say) would otherwise nest one call per request and overflow the stack.
            self.ctx.loop.call_soon(self._continue_pipeline)
        elif self.ctx.draining:
            self._close()
        else:
            self._set_timer(_IDLE, self.ctx.client_idle)

    # -- tunnel (called by UpstreamProtocol) ---------------------------------------------------

    def tunnel_peer_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
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
        up = self.up
        self.up = None
        if up is not None:
            up.close()  # close, not abort: what is still buffered for the backend goes out
        self._finish_attempt(Outcome(ok=True, status=101))
        self._close()

    # -- flow control, timers, closing ---------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        if not self._paused and self.transport is not None and self.state != CLOSED:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and self.state != CLOSED:
            self.transport.resume_reading()

    def _set_timer(self, kind: int, delay: float) -> None:
        self._timer_kind = kind
        deadline = self.ctx.loop.time() + delay
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.ctx.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state == CLOSED:
            return
        now = self.ctx.loop.time()
        if now < self._deadline:
            self._timer = self.ctx.loop.call_at(self._deadline, self._on_timer)
            return
        kind = self._timer_kind
        if kind == _HEADER and self.state == HEAD:
            self._reject(HttpError(408, "request header timeout"))
        elif kind == _RESPONSE and self.state in (BODY, WAIT) and not self.responded:
            self._abandon_upstream(Outcome(ok=False))
            self.keep_alive = False
            self._fail(504)
        elif kind == _IDLE and self.state == HEAD:
            self._close()

    def drain(self, grace: float) -> None:
        """Server stopping: finish the current exchange with ``Connection: close``; close when idle."""
        self.keep_alive = False  # in HEAD it is False already: _start sets it per request
        if self.state == HEAD and not self.buf:
            # An idle keep-alive connection: a request already on its way still gets an answer
            # (with Connection: close) during a short grace, then the connection closes.
            self._set_timer(_IDLE, grace)

    def _close(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()
        if self.up is not None:
            up, self.up = self.up, None
            up.abort()
            self._finish_attempt(Outcome(ok=True))
        if self._open:
            self._end_exchange()

    def check_stall(self, now: float) -> None:
        """Called by the Context's sweep: cut a body transfer that has not moved for an idle timeout."""
        state = self.state
        if state != BODY and state != WAIT:
            return
        ctx = self.ctx
        if self.responded:  # response body on its way to the client
            if self.bytes_out != self._out_mark:
                self._out_mark, self._out_at = self.bytes_out, now
            else:
                client = self._client_blocked  # it does not read: its fault, not the backend's
                if now - self._out_at >= (ctx.client_idle if client else ctx.backend_idle):
                    self._stalled(client)
                    return
        if state == BODY and not self.body_done:  # request body still coming
            if self.bytes_in != self._in_mark:
                self._in_mark, self._in_at = self.bytes_in, now
            else:
                backend = "upstream" in self._paused  # the backend does not read what we forward
                if now - self._in_at >= (ctx.backend_idle if backend else ctx.client_idle):
                    self._stalled(not backend)

    def _stalled(self, client: bool) -> None:
        ctx = self.ctx
        ctx.stats.idle_timeouts += 1
        log.info(
            "body transfer stalled",
            side="client" if client else "backend",
            backend=self.backend_addr,
            request_id=self.rid.decode("latin-1"),
        )
        self._abandon_upstream(Outcome(ok=client))
        if not self.responded or self.resp_head is not None:  # nothing of a response reached the client
            self.resp_head = None
            status = 408 if client else 504
            ctx.stats.error(status)
            self._send_error(status, self.rid, close=True)
        else:
            self.abort()  # the client sees a truncated response

    def abort(self) -> None:
        self._close()
        if self.transport is not None:
            self.transport.abort()
