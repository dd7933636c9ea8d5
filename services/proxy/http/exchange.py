"""One request/response cycle of a client connection: attempts, the upstream, the response relay.

A connection owns one Exchange and reuses it for each of its requests (nothing per request is
allocated that can live per connection). The client side (``client.py``) parses heads and hands a
request over with ``start_fast`` (a plain request: its received head spliced with the proxy's
lines) or ``start`` (any other: a parsed :class:`RequestHead`); the upstream side (``upstream.py``)
reports the response back with ``complete_fast`` (a plain response that arrived whole) or the
general calls (``response_head``, ``send``, ``send_pieces``, ``response_end``, ``upstream_failed``,
``bad_response``).

Attempts (``services/proxy/attempts.py``): a connect failure is retried on another backend; a failure
after the request was written and before any response byte is retried once more only for an
idempotent request without a body; both within ``proxy.retries`` and the retry budget. Once a
response byte reached the client, a failure can only abort the client connection.

Backpressure: the upstream's pause/resume_writing pauses/resumes reading the client (``PEER_FULL``);
the client transport's pause/resume_writing pauses/resumes reading the upstream. Until the upstream is
attached, request bytes queue in ``pending`` (reading pauses past the high-water mark: ``QUEUED``).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any, cast

from services.proxy.attempts import Attempts
from services.proxy.balancer import StaticRoundRobin, Upstream
from services.proxy.flow import PEER_FULL, QUEUED
from services.proxy.http import fast
from services.proxy.http.errors import error_response
from services.proxy.http.fast import host_name
from services.proxy.http.headers import (
    FAST_SUFFIX,
    FAST_SUFFIX_TRACE,
    REQUEST_ID_PREFIX,
    REQUEST_IDS,
    client_response_head,
    new_request_id,
    upstream_request_head,
)
from services.proxy.http.parser import (
    _FIELDS,
    IDEMPOTENT,
    LAST_CHUNK,
    ChunkedDecoder,
    HttpError,
    RequestHead,
    ResponseHead,
    frame_chunks,
)
from services.proxy.http.upstream import VIA_CLOSE_END, VIA_END, UpstreamConnection
from services.proxy.limits.gate import Bound, Gate
from services.proxy.limits.headers import too_many_requests
from services.proxy.observability.access_log import iso_time
from services.proxy.observability.tracing import TraceContext, continue_or_start, from_header
from services.proxy.proxy_protocol import forwarded_client
from services.proxy.routes import Route
from services.proxy.stats import BackendStats
from services.proxy.stats import tally as _tally
from shared.logs import get_logger

if TYPE_CHECKING:
    from services.proxy.http.client import ClientConnection

log = get_logger("proxy.http")

_clock = time.perf_counter  # loop.time() is in whole milliseconds under uvloop: too coarse for latencies
_ids = REQUEST_IDS
_trace_head = fast.trace_head
_NO_BACKENDS = StaticRoundRobin([])
_id_prefix = REQUEST_ID_PREFIX
_bits = random.Random().getrandbits
_HEAD = 0  # ClientConnection's HEAD state (client.py imports this module)


_NO_IDLE: dict[str, list[UpstreamConnection]] = {}


# A response head and body (or several body pieces) up to this size are joined into one write (one
# send()); beyond it they go as writelines, not copied.
JOIN_MAX = 65536


class Exchange(Attempts):
    """A connection's request cycle. It is its own :class:`Attempts` (the pick, the backend, the
    retries of the current request)."""

    __slots__ = (
        "body_done",
        "body_remaining",
        "bytes_in",
        "bytes_out",
        "client",
        "conn",
        "connecting",
        "decoder",
        "fast",
        "head_out",
        "idle",
        "keep_alive",
        "later",
        "open",
        "pending",
        "pending_size",
        "rechunk",
        "req",
        "resent",
        "resp_head",
        "resp_status",
        "responded",
        "rid",
        "route",
        "route_stats",
        "route_tally",
        "t0",
        "trace",
        "traceparent",
        "ttfb",
        "up",
        "upstream_sec",
        "via_end",
    )

    def __init__(self, conn: ClientConnection) -> None:
        super().__init__(conn.ctx)
        self.conn = conn
        ctx = self.ctx
        self.client = ""  # general path: the client's address (from a trusted X-Forwarded-For, else the peer)
        # The pool's idle connections by address (read on every request); the HTTP side pools only these.
        self.idle = cast("dict[str, list[UpstreamConnection]]", ctx.pool.idle)
        self.later = ctx.outbox.write  # the hot path's writes: sent when the loop's turn ends (see Outbox)
        self.up: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.open = False  # a request started and not yet ended (end())
        self.req: RequestHead | None = None  # the general path's parsed head (None on the fast path)
        self.rid = b"-"
        self.route: Route | None = None  # with routes: the current request's (its pool is ``balancer``)
        self.route_stats: BackendStats | None = None  # ... and its counters (None: no routes)
        self.route_tally: Any = None  # ... their fast-path part (route_stats.whole)
        # The response may take the fast path (HTTP/1.1 client, no upgrade, not HEAD, no body left to
        # send): True between requests, so a plain request does not set it.
        self.fast = True
        self.via_end = VIA_END  # how a fast-path response head ends (VIA_CLOSE_END: the connection's last)
        self.head_out = b""
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.body_remaining = 0
        self.decoder: ChunkedDecoder | None = None
        self.body_done = True
        self.keep_alive = True  # between requests: False only for a connection's last response
        self.resent = False
        self.responded = False  # response bytes written to the client (or held in resp_head)
        self.rechunk = False
        self.resp_head: bytes | None = None
        self.resp_status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.t0 = 0.0
        self.ttfb: float | None = None
        self.upstream_sec = 0.0
        self.traceparent: bytes | None = None  # sent to the backend
        self.trace: TraceContext | None = None  # general path: the parsed incoming context
        if ctx.draining:  # accepted during the shutdown delay: its first response is its last
            self.last_response()

    # -- starting a request --------------------------------------------------------------------

    def start_fast(self, plain: tuple[Any, ...], size: int) -> bool:
        """A plain request (``ctx.fast_scan``): its head without the blank line and its Host (with routes,
        also the Host's name, the path and the method); no body. False: not taken (with routes: no route
        matched, or the route rewrites the request): the general path has it from the start.

        The hot path. Between requests the exchange holds what a plain request needs (see
        ``_restore``): ``req`` is None, ``fast`` and ``keep_alive`` are True (unless draining), the
        attempt count is 1; the method and request id are read back from ``head_out`` when a failure
        needs them. Every bytecode here costs about 14 ns per request (``python -m bench bytecodes``).
        """
        ctx = self.ctx
        routes = ctx.routes
        if routes is None:  # one pool: the listener's
            head, host = plain
            balancer = self.balancer
        else:
            head, host, name, path, method, route = plain
            if route is not None and route.deferred:  # a condition to check, or a longer prefix to try
                route = route.resolve(routes, name, path, method, head)
            fast_route = ctx.fast_routes[route]
            if fast_route is None:  # no route (404), or one that rewrites the request
                return False
            balancer, self.route_stats, self.route_tally = fast_route
            self.balancer = balancer
        conn = self.conn
        ctx.stats.requests += 1
        self.bytes_in = size
        gate = ctx.gate
        if gate is not None:  # rate limits: one rule on the client's address asks its limiter here
            simple = gate.simple
            wait = simple.admit(conn.client_ip, ctx.loop.time()) if simple is not None else -1
            if wait and self._limited(gate, wait, head, route if routes is not None else None, conn.client_ip):
                return True
        via = ctx.trace_new
        if via is not None:  # a new sampled trace per request (tracing.propagate, the default): one C call
            out = self.head_out = _trace_head(head, conn.prefix, host, _id_prefix, next(_ids), via)
        else:
            out = self.head_out = self._fast_head(head, host)
        conn.deadline = ctx.response_at
        key = conn.client_ip if balancer.hash_key == "client_ip" else self._affinity_key(head)
        upstream = self.upstream = balancer.pick(key, ())
        if upstream is None:
            self.last = ""
            self.fail(503)
            return True
        self.started_at = _clock()
        idle = self.idle.get(upstream.address)
        if not idle:
            self._open_upstream(upstream)
            return True
        up = self.up = idle.pop()  # (never while the client is paused for writing: see client_blocked)
        up.ex = self
        self.later(up.transport, out)
        return True

    def _fast_head(self, head: bytes, host: bytes) -> bytes:
        """The fast path's head when its trace is not a plain new one (propagation off, sampling, a
        span or access log that needs the ids kept)."""
        ctx = self.ctx
        rid = self.rid = new_request_id()
        self.open = ctx.observe_each  # a span or log line for this request, whatever becomes of it
        if not ctx.propagate_trace:
            self.traceparent = None
            return head + self.conn.prefix + FAST_SUFFIX % (host, rid)
        tp = self.traceparent = b"00-%032x-%016x-%s" % (_bits(128) or 1, _bits(64) or 1, self._flags())
        return head + self.conn.prefix + FAST_SUFFIX_TRACE % (host, rid, tp)

    def request_method(self) -> bytes:
        req = self.req
        return req.method if req is not None else self.head_out[: self.head_out.find(b" ")]

    def request_id(self) -> bytes:
        """The request's X-Request-ID (a plain request's is read back from the head it was sent with)."""
        if self.req is not None or self.ctx.trace_new is None:
            return self.rid
        head = self.head_out
        start = head.rfind(b"\r\nX-Request-ID: ") + 16
        return head[start : head.find(b"\r\n", start)]

    def _open_upstream(self, upstream: Upstream) -> None:
        """No idle connection to ``upstream`` on the fast path: the general attach (a pooled connection
        while the client is paused for writing), else a new connection (the request waits in ``pending``)."""
        self.pending = [self.head_out]
        self.pending_size = len(self.head_out)
        up = self.ctx.pool.get(upstream.address)
        if isinstance(up, UpstreamConnection):
            self._attach(up)
            return
        self.ctx.stats.pool_misses += 1
        self.last = upstream.address
        self.connecting = self.ctx.loop.create_task(self._connect(upstream))

    def _flags(self) -> bytes:
        ratio = self.ctx.sample_ratio
        return b"01" if ratio >= 1.0 or random.random() < ratio else b"00"

    def start(self, req: RequestHead, rest: bytes | bytearray, head_size: int, raw: bytes = b"") -> None:
        """Any other request: ``req`` parsed by the general path from ``raw`` (its head without the blank
        line); ``rest``: bytes after its head."""
        ctx = self.ctx
        conn = self.conn
        ctx.stats.requests += 1
        route: Route | None = None
        if ctx.routes is not None:
            route = self.route = ctx.routes.match(
                host_name(req.host or b""), req.target.partition(b"?")[0], req.method, raw
            )
            self.route_stats = self.route_tally = None
            if route is not None:
                # (a route naming a pool this proxy has no balancer for yet answers 503: no backends)
                self.balancer = ctx.pools.get(route.pool) or _NO_BACKENDS
                rs = self.route_stats = ctx.stats.route(route)
                self.route_tally = rs.whole
        self.open = True
        self.req = req
        self.fast = req.minor == 1 and not req.upgrade and req.method != b"HEAD" and not req.has_body
        self.via_end = VIA_END if req.keep_alive and not ctx.draining else VIA_CLOSE_END
        self.rid = req.request_id or new_request_id()
        self.last = ""
        self.client = self._client(req)
        self.bytes_in = head_size
        self.bytes_out = 0
        self.responded = False
        self.resp_status = 0
        self.resent = False
        self.traceparent = None
        self.trace = None
        if ctx.propagate_trace:
            trace = self.trace = continue_or_start(req.traceparent, ctx.sample_ratio)
            self.traceparent = trace.header()
        if ctx.max_body and req.content_length is not None and req.content_length > ctx.max_body:
            self.error(413, close=True)
            return
        self.keep_alive = req.keep_alive and not ctx.draining
        if not self.keep_alive:
            conn.plain = False  # this response is the connection's last
        if route is not None and (route.strip_prefix or route.rewrite_host):
            if route.strip_prefix:
                req.target = route.strip(req.target)
            self.head_out = self._request_head(req, b"", route.rewrite_host)
        else:
            self.head_out = self._request_head(req, b"")
        self.pending = [self.head_out]
        self.pending_size = len(self.head_out)
        self.body_done = not req.has_body
        self.body_remaining = req.content_length or 0
        self.decoder = ChunkedDecoder(400, ctx.max_head) if req.chunked else None
        conn.begin_body(not self.body_done)
        if rest:
            if self.body_done:
                conn.keep(rest, 0)
            else:
                used = self.body(rest)
                if conn.closed:
                    return  # invalid framing in what came with the head: nothing was forwarded
                if used < len(rest):
                    conn.keep(rest, used)
        if self.body_done:
            conn.deadline = ctx.now + ctx.response_timeout
        self.t0 = 0.0
        if ctx.routes is not None and route is None:  # no route, and no default pool
            self.open = True
            self.fail(404)
            return
        gate = ctx.gate
        if gate is not None and self._limited(gate, -1, raw, route, self.client):
            return
        self._attempt(self.first(self._key()))

    # -- rate limits ---------------------------------------------------------------------------

    def _limited(self, gate: Gate, wait: int, head: bytes, route: Route | None, client: str) -> bool:
        """The rate limits, after routing: True when a rule refused the request (its 429 was written).
        ``wait`` > 0: the gate's one simple rule (``Gate.simple``) refused it already, for that many
        seconds; -1: the rules that meet the request are still to ask."""
        ctx = self.ctx
        if wait > 0:
            self._too_many(gate.bound[0], wait)
            return True
        pool, name = (route.pool, route.name) if route is not None else (ctx.pool_name, "")
        refused = gate.check(client, head, pool, name, ctx.loop.time())
        if refused is None:
            return False
        self._too_many(*refused)
        return True

    def _too_many(self, bound: Bound, wait: int) -> None:
        """Answer 429 with Retry-After and the RateLimit fields; nothing reaches a backend."""
        ctx = self.ctx
        ctx.stats.error(429)
        req = self.req
        rid = self.rid if req is not None else new_request_id()  # (a plain request's id is not made yet)
        close = not (self.keep_alive and self.body_done)
        rule = bound.rule
        response = too_many_requests(
            rule.name, rule.quota, rule.window, wait, rid, close=close, minor=req.minor if req is not None else 1
        )
        conn = self.conn
        if conn.closed:
            return
        conn.write_now(response)
        self.bytes_out += len(response)
        self.resp_status = 429
        if close:
            conn.close()
        else:
            self.done()

    def _client(self, req: RequestHead) -> str:
        """The client of a request: the connection's peer, or, when that peer is a trusted proxy
        (``proxy.trusted_proxies``), the address its X-Forwarded-For names (uvicorn's rule)."""
        peer = self.conn.client_ip
        trusted = self.ctx.trusted_proxies
        if not trusted or peer not in trusted:
            return peer
        values = [v.decode("latin-1") for n, v in req.headers if n.lower() == b"x-forwarded-for"]
        return forwarded_client(peer, values, trusted) if values else peer

    def _key(self) -> str:
        header, cookie = self.ctx.key_source(self.balancer.hash_key)
        req = self.req
        if header is None and cookie is None:
            return self.client if req is not None else self.conn.client_ip
        return self._affinity_from(req.headers if req is not None else [], header, cookie)

    def _affinity_key(self, head: bytes) -> str:
        """The affinity key of a fast-path request (only when ip_hash reads a header or a cookie)."""
        header, cookie = self.ctx.key_source(self.balancer.hash_key)
        if header is None and cookie is None:
            return self.conn.client_ip
        start = head.find(b"\r\n") + 2
        return self._affinity_from(_FIELDS.findall(head, start), header, cookie)

    def _affinity_from(self, headers: list[tuple[bytes, bytes]], header: bytes | None, cookie: bytes | None) -> str:
        if header is not None:
            for name, value in headers:
                if name.lower() == header and value:
                    return value.decode("latin-1")
        elif cookie is not None:
            prefix = cookie + b"="
            for name, value in headers:
                if name.lower() == b"cookie":
                    for part in value.split(b";"):
                        part = part.strip()
                        if part.startswith(prefix) and len(part) > len(prefix):
                            return part[len(prefix) :].decode("latin-1")
        return self.conn.client_ip

    def _request_head(self, req: RequestHead, host: bytes, host_override: bytes = b"") -> bytes:
        """The head sent upstream; ``host``: the Host given to a request without one; ``host_override``: the
        Host of a route that rewrites it."""
        trace = self.trace
        conn = self.conn
        return upstream_request_head(
            req,
            conn.client_ip,
            conn.proto,
            self.rid,
            host,
            req.upgrade,
            trace.header() if trace is not None else None,
            trace is None or trace.tracestate_kept,
            self.ctx.keep_underscores,
            conn.client_ip in self.ctx.trusted_proxies,
            host_override,
        )

    # -- the request body ----------------------------------------------------------------------

    def body(self, data: bytes | bytearray) -> int:
        """Request body bytes: frame-check, then forward (or queue until an upstream is attached).
        Returns how many bytes of ``data`` were the body: the caller keeps the rest (the next request),
        so it is never copied here."""
        ctx = self.ctx
        decoder = self.decoder
        if decoder is not None:
            try:
                pieces, used = decoder.feed(data)  # type: ignore[arg-type]
            except HttpError as exc:
                self._body_error(exc)
                return len(data)
            self.bytes_in += used
            seen = self.body_remaining = self.body_remaining - sum(map(len, pieces))  # negative: bytes seen
            if ctx.max_body and -seen > ctx.max_body:
                self._body_error(HttpError(413, "request body too large"))
                return len(data)
            out = frame_chunks(pieces)
            if decoder.done:
                out.append(LAST_CHUNK)
                self._forward(out)
                self._body_complete()
                return used
            if out:
                self._forward(out)
            return used
        remaining = self.body_remaining
        if len(data) <= remaining:
            self.bytes_in += len(data)
            self.body_remaining = remaining - len(data)
            self._forward([data])  # type: ignore[list-item]
            if self.body_remaining == 0:
                self._body_complete()
            return len(data)
        self.bytes_in += remaining
        self.body_remaining = 0
        self._forward([data[:remaining]])  # type: ignore[list-item]
        self._body_complete()
        return remaining

    def _body_complete(self) -> None:
        self.body_done = True
        req = self.req
        if req is not None and req.minor == 1 and not req.upgrade and req.method != b"HEAD":  # may go fast
            self.fast = True
            if self.up is not None:
                self.up.fast_again()
        conn = self.conn
        conn.body_complete()
        if not self.responded:
            conn.deadline = self.ctx.now + self.ctx.response_timeout

    def _body_error(self, exc: HttpError) -> None:
        # Whatever part of the body was forwarded, the upstream exchange is unusable now.
        self._abandon_upstream()
        self.finish(True)
        if self.responded and self.resp_head is None:
            self.ctx.stats.error(exc.status)
            self.conn.close()
        else:
            self.resp_head = None
            self.error(exc.status, close=True)

    def _forward(self, chunks: list[bytes]) -> None:
        up = self.up
        if up is not None and self.connecting is None:
            up.transport.writelines(chunks)
            return
        for c in chunks:
            self.pending.append(c)
            self.pending_size += len(c)
        if self.pending_size > self.ctx.high_water:
            self.conn.pause(QUEUED)

    # -- attempts ------------------------------------------------------------------------------

    def _attempt(self, upstream: Upstream | None) -> None:
        ctx = self.ctx
        self.open = True  # the general path has this exchange now (a retry of a plain request too)
        if upstream is None:
            self.fail(503 if self.count <= 1 and not self.tried else 502)
            return
        req = self.req
        if req is not None and req.host is None and self.pending and self.pending[0] is self.head_out:
            self._host_of(req, upstream)
        now = self.started_at = _clock()
        if not self.t0:
            self.t0 = now
        self.ttfb = None
        up = ctx.pool.get(upstream.address)
        if up is not None:
            self._attach(cast(UpstreamConnection, up))
        else:
            ctx.stats.pool_misses += 1
            self.connecting = ctx.loop.create_task(self._connect(upstream))

    def _host_of(self, req: RequestHead, upstream: Upstream) -> None:
        """HTTP/1.0 without Host: the backend gets its own address as Host."""
        head = self._request_head(req, upstream.address.encode())
        self.pending_size += len(head) - len(self.head_out)
        self.pending[0] = self.head_out = head

    async def _connect(self, upstream: Upstream) -> None:
        ctx = self.ctx
        if upstream.port < 0:  # a pool at its connection limits: queued or refused (limits/pools.py)
            got = await self.admitted(upstream)
            if isinstance(got, str):
                self.connecting = None
                self.fail(503, got)
                return
            upstream = got
            self.started_at = _clock()
            req = self.req
            if req is not None and req.host is None and self.pending and self.pending[0] is self.head_out:
                self._host_of(req, got)  # (it was given the ticket's)
            pooled = ctx.pool.get(got.address)
            if pooled is not None:
                self.connecting = None
                self._attach(cast(UpstreamConnection, pooled))
                return
        up = await self.connect(upstream, lambda: UpstreamConnection(ctx, upstream))
        self.connecting = None
        if self.conn.closed:
            if up is not None:
                up.close()
            return
        if up is None:
            self._attempt_failed_connect(upstream)
            return
        assert isinstance(up, UpstreamConnection)
        self._attach(up)

    def _attempt_failed_connect(self, upstream: Upstream) -> None:
        self.upstream_sec = _clock() - self.started_at
        nxt = self.next(self._key(), upstream.address)
        if nxt is None:
            self.fail(502)
        else:
            self._attempt(nxt)

    def _attach(self, up: UpstreamConnection) -> None:
        self.up = up
        up.begin(self)
        conn = self.conn
        # Paused for writing means paused until resume_writing, even once the buffer has drained below
        # the high-water mark: no other pause_writing will come to stop a fresh upstream.
        if conn.write_blocked or conn.transport.get_write_buffer_size() > self.ctx.high_water:
            up.transport.pause_reading()
        pending = self.pending
        if pending:
            up.transport.writelines(pending)
            self.pending = []
            self.pending_size = 0
            conn.pauses.resume(QUEUED)  # above the mark, pause_writing has set PEER_FULL already

    def _abandon_upstream(self) -> None:
        """Drop the exchange with the backend (connected or still connecting)."""
        up = self.up
        self.up = None
        if up is not None:
            up.abort()
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None

    # -- the response (called by UpstreamConnection) -------------------------------------------

    def complete_fast(self, up: UpstreamConnection, status: int, out: bytes) -> None:
        """A plain response that arrived whole, on a connection that stays clean: ``out`` is its head,
        rewritten for the client, and body (``fast.response``). The other half of the hot path."""
        self.up = None  # detached before the write: a pause_writing it triggers must not pause ``up``
        up.ex = None
        conn = self.conn
        self.later(conn.transport, out)
        ctx = self.ctx
        latency = _clock() - self.started_at
        upstream = self.upstream
        self.upstream = None
        self.balancer.finished(upstream, status < 500, latency)  # type: ignore[arg-type]
        if ctx.metrics_on:  # one C call: the backend's and the route's counters (stats.tally)
            _tally(up.tally, self.route_tally, status, latency, self.bytes_in, out)
        if self.open:  # a span or log line, or the general path ran (its start, a retry)
            if ctx.observe_each:
                self._observe_fast(up, status, latency, len(out))
            self._restore()
        # Back to the pool (its fast form: see Pool for the invariants that make it enough).
        idle = self.idle.get(up.address)
        if idle is not None and not up.transport.get_write_buffer_size():
            up.idle_since = ctx.now
            idle.append(up)
        else:
            ctx.pool.put(up.address, up)
        if conn.plain:
            conn.state = _HEAD
            conn.deadline = ctx.idle_at
        elif self.keep_alive:
            conn.request_done()
        else:
            conn.close()

    def complete_fast_dirty(self, up: UpstreamConnection, status: int, out: bytes) -> None:
        """A plain response followed by bytes that belong to no response: relayed, and the connection
        to the backend is not reused."""
        self.complete_fast(up, status, out)
        self.ctx.pool.discard(up.address, up)
        up.close()

    def _observe_fast(self, up: UpstreamConnection, status: int, latency: float, size: int) -> None:
        self.resp_status = status
        self.bytes_out = size
        self.upstream_sec = latency
        if self.req is None:
            self.t0 = self.started_at
        self.last = up.address
        self._observe(up.address)
        self.resp_status = self.bytes_out = 0

    def informational(self, head: ResponseHead) -> None:
        if self.req is None or self.req.minor >= 1:
            self.conn.write_now(client_response_head(head, 1, True, rechunk=False, tunnel=False))

    def response_head(self, up: UpstreamConnection, head: ResponseHead, fast_head: bytes | None = None) -> None:
        """The response head arrived (``fast_head``: already rewritten by the fast path)."""
        self.resp_status = head.status
        self.ttfb = _clock() - self.started_at
        if not self.open:  # a plain request leaving the fast path: end() must count it
            self.open = True
            self.last = up.address
            self.t0 = self.started_at
        conn = self.conn
        conn.deadline = self.ctx.now + self.ctx.tick  # the body transfer is watched for stalls
        conn.mark_progress()
        self.responded = True
        if up.tunnel:
            self.ctx.stats.tunnels += 1
            self.last_response()
            out = client_response_head(head, 1, False, False, True)
            self.bytes_out += len(out)
            conn.write_now(out)
            conn.start_tunnel(up)
            return
        req = self.req
        minor = req.minor if req is not None else 1
        if head.content_length is None and not head.chunked:
            self.last_response()  # body ends with the backend's close
        elif head.chunked and minor == 0:
            self.last_response()  # 1.0 client: send decoded, delimited by close
        self.rechunk = head.chunked and minor >= 1
        if fast_head is not None:
            self.resp_head = fast_head
        else:  # written together with the first body bytes: one send() instead of two
            self.resp_head = client_response_head(head, minor, self.keep_alive, self.rechunk, False)

    def send(self, data: bytes) -> None:
        conn = self.conn
        head = self.resp_head
        if head is not None:
            self.resp_head = None
            self.bytes_out += len(head) + len(data)
            if len(data) <= JOIN_MAX:
                conn.write_now(head + data)
            else:
                conn.writelines_now([head, data])
            return
        self.bytes_out += len(data)
        conn.write_now(data)

    def send_pieces(self, pieces: list[bytes]) -> None:
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
            self.conn.write_now(b"".join(out))
        else:
            self.conn.writelines_now(out)

    def response_end(self, up: UpstreamConnection, reusable: bool) -> None:
        if up is not self.up:
            return
        ctx = self.ctx
        self.up = None
        up.ex = None
        tail = LAST_CHUNK if self.rechunk else b""
        if self.resp_head is not None:
            tail = self.resp_head + tail
            self.resp_head = None
        if tail:
            self.bytes_out += len(tail)
            self.conn.write_now(tail)
        status = self.resp_status
        latency = self.upstream_sec = _clock() - self.started_at
        self.finish_ok(latency, status)
        if ctx.metrics_on:
            up.stats.finished(status, latency, self.ttfb)
            if self.route_stats is not None:
                self.route_stats.finished(status, latency, self.ttfb)
        if reusable and self.body_done:
            up.transport.resume_reading()
            ctx.pool.put(up.upstream.address, up)
        else:
            up.close()
        if not self.body_done:
            self.last_response()  # the rest of the request body would have to be read first
        self.done()

    def upstream_failed(self, up: UpstreamConnection) -> None:
        """The backend closed or reset the connection before the response was complete."""
        if up is not self.up or self.conn.closed:
            return
        self.up = None
        ctx = self.ctx
        self.upstream_sec = _clock() - self.started_at
        self._count_failure(up)
        self.finish(False)
        if (self.responded and self.resp_head is None) or up.got_bytes:
            self.conn.close()  # part of a response went out: the client sees a truncated message
            return
        # Nothing of a response: retry once more if it is safe to send the request again.
        req = self.req
        safe = (req.idempotent and not req.has_body) if req is not None else self.request_method() in IDEMPOTENT
        if safe and not self.resent:
            nxt = self.next(self._key(), up.upstream.address)
            if nxt is not None:
                self.resent = True
                self.responded = False
                self.resp_head = None
                self.pending = [self.head_out]
                self.pending_size = len(self.head_out)
                self._attempt(nxt)
                return
        ctx.stats.error(502)
        self._answer(502)

    def bad_response(self, up: UpstreamConnection, exc: HttpError) -> None:
        if up is not self.up:
            return
        self.up = None
        self.upstream_sec = _clock() - self.started_at
        self._count_failure(up)
        self.finish(False)
        log.debug("bad response from backend", upstream=up.upstream.address, error=exc.reason)
        if self.resp_head is not None:  # refused before any of it reached the client: a clean 502
            self.resp_head = None
            self.responded = False
            self.last_response()
        if self.responded:
            self.ctx.stats.error(exc.status)
            self.conn.close()
        else:
            self.fail(exc.status)

    def _count_failure(self, up: UpstreamConnection) -> None:
        if self.ctx.metrics_on:
            up.stats.finished(None, self.upstream_sec, self.ttfb)

    # -- ending --------------------------------------------------------------------------------

    def fail(self, status: int, why: str = "") -> None:
        """The proxy answers the current request itself (502/503/504; ``why``: X-GoBalancer-Reason)."""
        self.ctx.stats.error(status)
        self._answer(status, why)

    def _answer(self, status: int, why: str = "") -> None:
        if self.responded:
            self.conn.close()
            return
        close = not (self.keep_alive and self.body_done)
        self.error(status, close=close, counted=True, why=why)
        if not close:
            self.done()

    def error(self, status: int, *, close: bool, counted: bool = False, why: str = "") -> None:
        """Write the proxy's own response ``status`` (and close the connection when ``close``)."""
        if not counted:
            self.ctx.stats.error(status)
        conn = self.conn
        if conn.closed:
            return
        req = self.req
        response = error_response(
            status, self.request_id(), close=close, minor=req.minor if req is not None else 1, why=why
        )
        conn.write_now(response)
        self.bytes_out += len(response)
        self.resp_status = status
        if close:
            conn.close()

    def done(self) -> None:
        """The response is complete: account for the exchange, then let the connection go on."""
        if self.open:
            self.end()
        self._restore()
        self.conn.request_done() if self.keep_alive else self.conn.close()

    def last_response(self) -> None:
        """The current response is the connection's last (it closes after it)."""
        self.keep_alive = False
        self.via_end = VIA_CLOSE_END
        self.conn.plain = False

    def _restore(self) -> None:
        """Put back what the general path changed: the fast path relies on these between requests."""
        self.open = False
        self.req = None
        self.responded = False
        self.resp_status = 0
        self.resp_head = None
        self.resent = False
        self.rechunk = False
        self.decoder = None
        self.body_done = True
        self.bytes_out = 0
        self.trace = None
        self.t0 = 0.0
        self.ttfb = None
        self.count = 1
        self.fast = True
        self.via_end = VIA_END if self.keep_alive else VIA_CLOSE_END

    def end(self) -> None:
        """Once per request, however it ended: bytes per backend, access-log line, span."""
        self.open = False
        ctx = self.ctx
        address = self.last
        if ctx.metrics_on and address:
            b = ctx.stats.backend(address)
            b.request_bytes += self.bytes_in
            b.response_bytes += self.bytes_out
        if ctx.observe_each:
            self._observe(address)

    def _observe(self, backend: str) -> None:
        ctx = self.ctx
        access_log = ctx.access_log
        trace = self.trace
        if trace is None and self.traceparent is not None:
            trace = from_header(self.traceparent)
        export = ctx.exporter is not None and trace is not None and trace.sampled
        if (access_log is None or not access_log.sampled()) and not export:
            return
        now = _clock()
        total = now - (self.t0 or now)
        wall = time.time()
        req = self.req
        method = self.request_method().decode("latin-1")
        target = req.target.decode("latin-1") if req is not None else "-"
        if access_log is not None:
            access_log.write(
                {
                    "time": iso_time(wall),
                    "client": self.client if self.req is not None else self.conn.client_ip,
                    "method": method,
                    "target": target,
                    "status": self.resp_status or None,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                    "duration_ms": round(total * 1000.0, 3),
                    "upstream_ms": round(self.upstream_sec * 1000.0, 3) if backend else None,
                    "backend": backend or None,
                    "attempts": self.count,
                    "request_id": self.request_id().decode("latin-1"),
                    "trace_id": trace.trace_id.decode() if trace is not None else None,
                }
            )
        if export and ctx.exporter is not None and trace is not None:
            attributes: dict[str, Any] = {
                "http.request.method": method,
                "url.path": target,
                "client.address": self.client if self.req is not None else self.conn.client_ip,
                "gobalancer.request_id": self.request_id().decode("latin-1"),
                "gobalancer.attempts": self.count,
            }
            if self.resp_status:
                attributes["http.response.status_code"] = self.resp_status
            if backend:
                attributes["gobalancer.backend"] = backend
            ctx.exporter.export(trace, wall - total, total, attributes, not self.resp_status or self.resp_status >= 500)

    def abort(self) -> None:
        """The client connection is gone (or being closed): drop the upstream, end the attempt."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        up = self.up
        if up is not None:
            self.up = None
            up.abort()
        in_flight = self.open or self.upstream is not None  # (a plain request in flight is not "open")
        self.finish(True)  # the client went away: not the backend's fault
        if in_flight:
            self.end()

    # -- flow control, stalls ------------------------------------------------------------------

    def client_blocked(self, blocked: bool) -> None:
        """The client stopped (or resumed) reading what we write: so does the upstream. While it is
        blocked the fast path finds no idle connection (``idle`` is an empty map), so a pooled one is
        attached by ``_attach``, which pauses it first."""
        self.idle = _NO_IDLE if blocked else cast("dict[str, list[UpstreamConnection]]", self.ctx.pool.idle)
        up = self.up
        if up is not None and up.transport is not None:
            if blocked:
                up.transport.pause_reading()
            else:
                up.transport.resume_reading()

    def upstream_full(self, full: bool) -> None:
        if full:
            self.conn.pause(PEER_FULL)
        else:
            self.conn.pauses.resume(PEER_FULL)

    def stalled(self, client: bool) -> None:
        """A body transfer stopped moving: ``client`` says which side stopped."""
        ctx = self.ctx
        ctx.stats.idle_timeouts += 1
        log.info(
            "body transfer stalled",
            side="client" if client else "backend",
            backend=self.last,
            request_id=self.request_id().decode("latin-1"),
        )
        up = self.up
        self._abandon_upstream()
        if up is not None and not client:
            self._count_failure(up)
        self.finish(client)
        if not self.responded or self.resp_head is not None:  # nothing of a response reached the client
            self.resp_head = None
            self.error(408 if client else 504, close=True)
        else:
            self.conn.abort()  # the client sees a truncated response

    def response_timeout(self) -> None:
        self._abandon_upstream()
        self.finish(False)
        self.last_response()
        self.fail(504)
