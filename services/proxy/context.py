"""What every connection of one proxy process shares: settings, balancer, pool, counters, the clock sweep.

The protocols import this module; it imports none of them: connections are only seen through the
small :class:`Swept` interface (a deadline and what to do when it passes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

from services.proxy.balancer import Balancer
from services.proxy.http import fast
from services.proxy.http.headers import FAST_TRACE_VIA
from services.proxy.http.pool import Pool, Pooled
from services.proxy.limits.gate import Gate
from services.proxy.observability.access_log import AccessLog
from services.proxy.observability.tracing import SpanExporter, make_exporter
from services.proxy.outbox import Outbox, flush_first
from services.proxy.proxy_protocol import TrustedNetworks
from services.proxy.routes import Route, RouteTable
from services.proxy.stats import BackendStats, RetryBudget, Stats
from shared.config import DEFAULT_POOL, Config
from shared.config.routing import RouteSpec

NEVER = float("inf")


class Swept(Protocol):
    """A client connection as the context sees it."""

    deadline: float  # loop time when ``on_deadline`` is due (NEVER: nothing due)

    def on_deadline(self, now: float) -> None: ...

    def drain(self, grace: float) -> None: ...

    def abort(self) -> None: ...


class FastRoutes(dict["Route | None", "tuple[Balancer, BackendStats, Any] | None"]):
    """Route -> (its pool's balancer, its counters, their fast-path Tally) for the routes the fast path
    takes; anything else (None: no route; a route that rewrites the request) -> None. A subscript, not ``.get()``: one
    bytecode on the hot path instead of three."""

    def __missing__(self, route: Route | None) -> None:
        return None


class Context:
    def __init__(
        self,
        config: Config,
        balancer: Balancer,
        loop: asyncio.AbstractEventLoop,
        pools: Mapping[str, Balancer] | None = None,
        routed: bool = True,
        stats: Stats | None = None,
        gate: Gate | None = None,
        pool_name: str = DEFAULT_POOL,
    ) -> None:
        """``balancer``: the default pool's (or, for a listener of one pool, that pool's); ``pools``: every
        pool's by name, for the routes (``routed`` False: a listener of one pool, the routes unused)."""
        p, t = config.proxy, config.timeout
        self.config = config
        self.balancer = balancer
        self.loop = loop
        self.stats = stats if stats is not None else Stats()
        # Rate limits (config.rate_limits): None without rules, so a proxy without them pays one test per
        # request. One gate per process (its listeners share it, and its limiters sync with Redis).
        self.gate = gate
        self.pool_name = pool_name  # the pool of a request no route sent elsewhere (a listener's own pool)
        self.budget = RetryBudget(p.retry_budget)
        self.pool: Pool[Pooled] = Pool(p.pool_size, float(t.backend_idle_sec), loop)
        self.outbox = Outbox(loop)  # the hot path's writes, sent together when the loop's turn ends
        # Routing (config.routes, or the store's table): None with no routes, so the one-pool path pays one
        # test per request. ``routed`` False: a listener of one pool.
        self.routed = routed
        self.pools: dict[str, Balancer] = {}
        self.routes: RouteTable | None = None
        # The routes the fast path takes, and their pools' balancers: a route that rewrites the request
        # (strip_prefix, rewrite_host) is the general path's, as is a request no route matches (404).
        self.fast_routes: FastRoutes = FastRoutes()
        # The fast scan: with routes it also looks the route up (fast.request_route: the Host's name, path,
        # method and the route's fast answer).
        self.fast_scan: Callable[[bytes, int, int], tuple[Any, ...] | None] = fast.request
        self._followed: set[int] = set()  # balancers whose departures this context follows
        self.use_routes({DEFAULT_POOL: balancer, **(pools or {})}, config.routes, config.unmatched_pool)
        self.max_head = p.max_header_bytes
        self.max_target = p.max_target_bytes
        self.max_body = p.max_body_bytes
        self.retries = p.retries
        self.high_water = p.high_water_bytes
        self.keep_underscores = p.keep_underscore_headers
        # Who the client is behind a balancer: peers that must start with a PROXY header, and peers whose
        # X-Forwarded-For is believed (both empty by default: nobody).
        self.proxy_protocol_from = TrustedNetworks(p.proxy_protocol_from)
        self.trusted_proxies = TrustedNetworks(p.trusted_proxies)
        self.client_idle = float(t.client_idle_sec)
        self.header_read = float(t.header_read_sec)
        self.connect_timeout = float(t.connect_timeout)
        self.response_timeout = float(t.response_sec)
        self.backend_idle = float(t.backend_idle_sec)
        # Observability: each is one attribute check on the request path when off.
        self.metrics_on = config.metrics.enabled
        self.access_log: AccessLog | None = AccessLog.from_config(config.logging)
        self.propagate_trace = config.tracing.propagate
        self.sample_ratio = config.tracing.sample_ratio
        self.exporter: SpanExporter | None = make_exporter(config.tracing) if config.tracing.propagate else None
        # Requests whose work goes beyond the fast path's: an access log or span per request.
        self.observe_each = self.access_log is not None or self.exporter is not None
        # The fast path's Via and traceparent start (``fast.trace_head``) when a new sampled trace is all
        # tracing asks of a request (None: see Exchange._fast_head).
        self.trace_new: bytes | None = (
            FAST_TRACE_VIA if self.propagate_trace and self.sample_ratio >= 1.0 and not self.observe_each else None
        )
        self._key_sources: dict[str, tuple[bytes | None, bytes | None]] = {}
        self.draining = False
        self.connections: set[Swept] = set()
        self.all_closed = asyncio.Event()  # set when draining and the last connection is gone
        # The clock of deadlines: loop time, refreshed by the sweep (no clock read per request).
        shortest = min(self.client_idle, self.backend_idle, self.header_read, self.response_timeout)
        self.tick = min(1.0, max(0.01, shortest / 4))
        self.now = self.response_at = self.idle_at = 0.0
        self._clock(loop.time())
        self._sweeper: asyncio.TimerHandle | None = None

    def use_routes(self, pools: Mapping[str, Balancer], routes: Sequence[RouteSpec], unmatched_pool: str) -> None:
        """Route with ``routes`` over ``pools`` from now on (a table from the store replaces the running one:
        the swap is this one synchronous call, so every request sees one table or the other; a request
        under way keeps the balancer it picked from).

        Once routing is on it stays on: a table emptied later is an empty table sending every request to
        the default pool, not ``None`` (the plain path reads the connection's balancer, which a routed
        request may have set to another pool's)."""
        self.pools = {DEFAULT_POOL: self.balancer, **pools}
        # A balancer whose backends come and go tells when one left: its counters and idle
        # connections go with it (no growth with churn).
        for balancer in self.pools.values():
            if id(balancer) in self._followed:
                continue
            self._followed.add(id(balancer))
            forget_listeners: list[Callable[[str], None]] | None = getattr(balancer, "forget_listeners", None)
            if forget_listeners is not None:
                forget_listeners += [self.stats.forget, self.pool.forget]
        if not self.routed or (not routes and self.routes is None):
            return
        table = RouteTable.build(routes, unmatched_pool)
        every = [r for r in (*table.routes, table.unmatched) if r is not None]
        fast_routes = FastRoutes(
            (r, (self.pools[r.pool], rs, rs.whole))
            for r in every
            if not (r.strip_prefix or r.rewrite_host) and r.pool in self.pools
            for rs in (self.stats.route(r),)
        )
        self.stats.keep_routes({r.label for r in every})
        self.fast_routes, self.routes = fast_routes, table
        self.fast_scan = partial(fast.request_route, table.hosts)

    def key_source(self, spec: str) -> tuple[bytes | None, bytes | None]:
        """(header name, cookie name) the affinity key comes from for a balancer's ``hash_key`` ``spec``;
        (None, None): the client IP.

        The spec can change live (the store's algorithm setting), so the caller reads it from its pool's
        balancer on each call; each spec is parsed once (a handful: one per pool and setting)."""
        source = self._key_sources.get(spec)
        if source is None:
            if spec.startswith("header:"):
                source = (spec[7:].lower().encode(), None)
            elif spec.startswith("cookie:"):
                source = (None, spec[7:].encode())
            else:
                source = (None, None)
            if len(self._key_sources) < 64:
                self._key_sources[spec] = source
        return source

    # -- deadlines ------------------------------------------------------------------------------

    def start_sweeps(self) -> None:
        """Every timeout of every connection (idle, header read, response, stalled transfers) is a
        deadline that one periodic sweep checks, a few times per the shortest timeout: no timer is
        armed or moved per request, and the clock is read once per sweep, not per request."""
        self._sweeper = self.loop.call_later(self.tick, self._sweep)

    def _clock(self, now: float) -> None:
        # ``now`` is read once per sweep; until the next one the current time is at most now + tick, and
        # that upper bound is what deadlines start from: a timeout never fires early, and at most two
        # ticks late (a few per cent of the shortest timeout).
        self.now = now = now + self.tick
        self.response_at = now + self.response_timeout  # a response head is due by then
        self.idle_at = now + self.client_idle  # an idle keep-alive connection closes then

    def _sweep(self) -> None:
        now = self.loop.time()
        self._clock(now)
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.on_deadline(now)
        self._sweeper = self.loop.call_later(self.tick, self._sweep)

    def close(self) -> None:
        """The server stopped: sweeps off, access log flushed, pool closed (the span exporter is shut
        down by ``Server.stop``, off the loop)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        flush_first(self.outbox)
        if self.access_log is not None:
            self.access_log.close()
        self.pool.close()

    # -- counters shared by the HTTP and TCP paths ----------------------------------------------

    def count_retry(self, address: str) -> None:
        """Another attempt after the one against ``address`` failed."""
        self.stats.retries += 1
        if self.metrics_on:
            self.stats.backend(address).retries += 1

    def count_connect_failure(self, address: str, duration: float) -> None:
        self.stats.connect_failures += 1
        if self.metrics_on:
            b = self.stats.backend(address)
            b.connect_errors += 1
            b.finished(None, duration, None)

    def forget(self, conn: Swept) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self.all_closed.set()
