"""What every connection of one proxy process shares: settings, balancer, pool, counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from services.proxy.balancer import Balancer
from services.proxy.http.pool import Pool
from services.proxy.observability.access_log import AccessLog
from services.proxy.observability.tracing import SpanExporter, make_exporter
from services.proxy.stats import RetryBudget, Stats
from shared.config import Config

if TYPE_CHECKING:
    from services.proxy.http.client_protocol import ClientConnection
    from services.proxy.tcp import TcpClient


class Context:
    def __init__(self, config: Config, balancer: Balancer, loop: asyncio.AbstractEventLoop) -> None:
        p, t = config.proxy, config.timeout
        self.config = config
        self.balancer = balancer
        self.loop = loop
        self.stats = Stats()
        self.budget = RetryBudget(p.retry_budget)
        self.pool = Pool(p.pool_size, float(t.backend_idle_sec), loop)
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
        self._stall_timer: asyncio.TimerHandle | None = None
        self._key_spec = ""
        self._key_source: tuple[bytes | None, bytes | None] = (None, None)
        self.draining = False
        self.connections: set[ClientConnection | TcpClient] = set()
        self.all_closed = asyncio.Event()  # set when draining and the last connection is gone

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

    # -- stalled body transfers ----------------------------------------------------------------

    def start_stall_checks(self) -> None:
        """HTTP mode: look for body transfers that stopped moving, a few times per idle timeout.

        One periodic sweep over the connections instead of a timer per request: the progress of a
        transfer is read from byte counters the data plane keeps anyway (no clock read per chunk).
        """
        self._stall_tick = min(1.0, max(0.01, min(self.client_idle, self.backend_idle) / 4))
        self._stall_timer = self.loop.call_later(self._stall_tick, self._check_stalls)

    def _check_stalls(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_stall(now)
        self._stall_timer = self.loop.call_later(self._stall_tick, self._check_stalls)

    def close(self) -> None:
        """The server stopped: timers off, access log flushed, pool closed (the span exporter is shut down
        by ``Server.stop``, off the loop)."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.access_log is not None:
            self.access_log.close()
        self.pool.close()

    # -- counters shared by the HTTP and TCP paths ----------------------------------------------

    def count_retry(self, address: str) -> None:
        """Another attempt after the one against ``address`` failed."""
        self.stats.retries += 1
        if self.metrics_on:
            self.stats.backend(address).retries += 1

    def count_connect_failure(self, address: str) -> None:
        self.stats.connect_failures += 1
        if self.metrics_on:
            self.stats.backend(address).connect_errors += 1

    def forget(self, conn: ClientConnection | TcpClient) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self.all_closed.set()
