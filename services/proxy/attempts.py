"""Attempts: which backend a request (HTTP) or connection (TCP) goes to, and whether to try another.

One planner for both paths:

- ``first`` picks a backend for a new request; ``next`` picks another after a failure, if the
  retries setting and the retry budget allow it (counted per backend as a retry).
- ``connect`` opens a new connection to the current backend within ``timeout.connect_timeout``;
  a failure is counted (``connect_errors``) and reported to the balancer as a connect failure.
- ``finish`` reports the end of the current attempt to the balancer, once.

When is a retry safe? A connect failure always is (nothing was sent). Once the request was written
and before any response byte arrived, only an idempotent request without a body is sent again, and
only once (the HTTP exchange decides that: TCP never resends). Once a response byte reached the
client, nothing is retried. Each attempt is an in-flight request of the balancer from ``first``/``next``
until ``finish``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from services.proxy.balancer import Balancer, Upstream
from shared.logs import get_logger

if TYPE_CHECKING:
    from services.proxy.context import Context
    from services.proxy.limits.pools import LimitedBalancer

log = get_logger("proxy.attempts")

_clock = time.perf_counter  # uvloop's loop.time() is in whole milliseconds


class Attempts:
    """The attempts of one exchange (HTTP: a request; TCP: a connection). The HTTP exchange and the TCP
    client *are* their attempts (they subclass this): the hot path reads these fields directly."""

    __slots__ = ("balancer", "count", "ctx", "last", "started_at", "tried", "upstream")

    def __init__(self, ctx: Context, balancer: Balancer | None = None) -> None:
        self.ctx = ctx
        # The pool's balancer: the listener's (the default pool's, or a listener's own pool), or, with
        # routes, the matched route's pool (set per request by the HTTP exchange).
        self.balancer: Balancer = balancer if balancer is not None else ctx.balancer
        self.count = 0  # attempts made for the current request
        self.tried: list[str] | tuple[()] = ()  # addresses tried before the current attempt
        self.upstream: Upstream | None = None  # the current attempt's backend, until finish()
        self.started_at = 0.0
        self.last = ""  # the address of the last backend picked (for logs and byte counts)

    def first(self, key: str) -> Upstream | None:
        self.count = 1
        self.tried = ()
        upstream = self.upstream = self.balancer.pick(key, ())
        if upstream is not None:
            self.last = upstream.address
        return upstream

    def next(self, key: str, failed: str) -> Upstream | None:
        """Another backend after the one at ``failed`` did not answer; None: no retry allowed or left."""
        ctx = self.ctx
        if self.count > ctx.retries or not ctx.budget.withdraw(ctx.stats.requests):
            return None
        # (The fast path does not reset ``tried`` for each request: a first retry starts it anew.)
        tried = self.tried = [failed] if self.count == 1 else [*self.tried, failed]
        upstream = self.balancer.pick(key, tried)
        if upstream is not None:
            self.count += 1
            self.last = upstream.address
            ctx.count_retry(failed)
        self.upstream = upstream
        return upstream

    def finish(self, ok: bool, latency: float | None = None) -> None:
        """The current attempt is over (a no-op when there is none)."""
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            self.last = upstream.address
            self.balancer.finished(upstream, ok, latency)

    def finish_ok(self, latency: float, status: int) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            self.last = upstream.address
            self.balancer.finished(upstream, status < 500, latency)

    async def admitted(self, ticket: Upstream) -> Upstream | str:
        """A pool at its connection limits answered a pick with a ticket (``port < 0``, limits/pools.py):
        wait for the backend it grants, now the current attempt's; or the reason of the 503 (the attempt
        is over: nothing to finish)."""
        got = await cast("LimitedBalancer", self.balancer).wait(ticket)
        if isinstance(got, str):
            self.upstream = None
        else:
            self.upstream, self.last = got, got.address
        return got

    async def connect(self, upstream: Upstream, factory: Callable[[], asyncio.Protocol]) -> Any:
        """A new connection's protocol, or None after a failure (counted, reported, logged)."""
        ctx = self.ctx
        start = _clock()
        try:
            _, proto = await asyncio.wait_for(
                ctx.loop.create_connection(factory, upstream.host, upstream.port), ctx.connect_timeout
            )
        except asyncio.CancelledError:
            # The client went away during the connect: the attempt is over too (else its in-flight
            # count would stay forever and steer every replica away from this backend).
            self.finish(True)
            raise
        except (TimeoutError, OSError) as exc:
            ctx.count_connect_failure(upstream.address, _clock() - start)
            self.finish(False)
            log.debug("connect failed", upstream=upstream.address, error=str(exc) or type(exc).__name__)
            return None
        return proto
