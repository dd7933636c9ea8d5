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
        hash_key = config.balancing.hash_key
        self.key_header: bytes | None = None
        self.key_cookie: bytes | None = None
        if hash_key.startswith("header:"):
            self.key_header = hash_key[7:].lower().encode()
        elif hash_key.startswith("cookie:"):
            self.key_cookie = hash_key[7:].encode()
        self.draining = False
        self.connections: set[ClientConnection | TcpClient] = set()
        self.all_closed = asyncio.Event()  # set when draining and the last connection is gone

    def forget(self, conn: ClientConnection | TcpClient) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self.all_closed.set()
