"""What every connection of one proxy process shares: settings, balancer, pool, counters."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from services.proxy.balancer import Balancer
from services.proxy.http.pool import Pool
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
        self._key_spec = ""
        self._key_source: tuple[bytes | None, bytes | None] = (None, None)
        self.draining = False
        self.connections: set[ClientConnection | TcpClient] = set()
        self.all_closed = asyncio.Event()  # set when draining and the last connection is gone

    def _parsed_key_source(self) -> tuple[bytes | None, bytes | None]:
        # The affinity key source can change live (the store's algorithm setting), so it is read from
        # the balancer when it has one and re-parsed only when the spec string changes.
        spec: str = getattr(self.balancer, "hash_key", None) or self.config.balancing.hash_key
        if spec != self._key_spec:
            self._key_spec = spec
            if spec.startswith("header:"):
                self._key_source = (spec[7:].lower().encode(), None)
            elif spec.startswith("cookie:"):
                self._key_source = (None, spec[7:].encode())
            else:
                self._key_source = (None, None)
        return self._key_source

    @property
    def key_header(self) -> bytes | None:
        return self._parsed_key_source()[0]

    @property
    def key_cookie(self) -> bytes | None:
        return self._parsed_key_source()[1]

    def forget(self, conn: ClientConnection | TcpClient) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self.all_closed.set()
