"""What every connection of one proxy process shares: settings, balancer, pool, counters, the clock sweep.

The protocols import this module; it imports none of them: connections are only seen through the
small :class:`Swept` interface (a deadline and what to do when it passes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from services.proxy.balancer import Balancer
from services.proxy.http.headers import FAST_HEAD_NEW_TRACE
from services.proxy.http.pool import Pool, Pooled
from services.proxy.observability.access_log import AccessLog
from services.proxy.observability.tracing import SpanExporter, make_exporter
from services.proxy.proxy_protocol import TrustedNetworks
from services.proxy.stats import RetryBudget, Stats
from shared.config import Config

NEVER = float("inf")


class Swept(Protocol):
    """A client connection as the context sees it."""

    deadline: float  # loop time when ``on_deadline`` is due (NEVER: nothing due)

    def on_deadline(self, now: float) -> None: ...

    def drain(self, grace: float) -> None: ...

    def abort(self) -> None: ...


class Context:
    def __init__(self, config: Config, balancer: Balancer, loop: asyncio.AbstractEventLoop) -> None:
        p, t = config.proxy, config.timeout
        self.config = config
        self.balancer = balancer
        self.loop = loop
        self.stats = Stats()
        self.budget = RetryBudget(p.retry_budget)
        self.pool: Pool[Pooled] = Pool(p.pool_size, float(t.backend_idle_sec), loop)
        # A balancer whose backends come and go tells when one left: its counters and idle
        # connections go with it (no growth with churn).
        forget_listeners: list[Callable[[str], None]] | None = getattr(balancer, "forget_listeners", None)
        if forget_listeners is not None:
            forget_listeners += [self.stats.forget, self.pool.forget]
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
        # The fast path's own lines with a new sampled trace, when that is all tracing asks of a request
        # (None: see Exchange._fast_head).
        self.trace_new: bytes | None = (
            FAST_HEAD_NEW_TRACE if self.propagate_trace and self.sample_ratio >= 1.0 and not self.observe_each else None
        )
        self._key_spec = ""
        self._key_source: tuple[bytes | None, bytes | None] = (None, None)
        self.draining = False
        self.connections: set[Swept] = set()
        self.all_closed = asyncio.Event()  # set when draining and the last connection is gone
        # The clock of deadlines: loop time, refreshed by the sweep (no clock read per request).
        shortest = min(self.client_idle, self.backend_idle, self.header_read, self.response_timeout)
        self.tick = min(1.0, max(0.01, shortest / 4))
        self.now = self.response_at = self.idle_at = 0.0
        self._clock(loop.time())
        self._sweeper: asyncio.TimerHandle | None = None

    def key_source(self) -> tuple[bytes | None, bytes | None]:
        """(header name, cookie name) the affinity key comes from; (None, None): the client IP.

        It can change live (the store's algorithm setting), so it is read from the balancer on each call,
        and parsed again only when the spec string changes."""
        spec = self.balancer.hash_key
        if spec != self._key_spec:
            self._key_spec = spec
            if spec.startswith("header:"):
                self._key_source = (spec[7:].lower().encode(), None)
            elif spec.startswith("cookie:"):
                self._key_source = (None, spec[7:].encode())
            else:
                self._key_source = (None, None)
        return self._key_source

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
