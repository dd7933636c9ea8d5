"""A whole stack for one scenario: demo backends, N proxy replicas on their own ports, health,
discovery and admin, all on one Redis; ready when every replica routes to every backend."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.redis_server import free_port
from tests.reliability.load import Load, LoadResult
from tests.reliability.probe import until_routes_to
from tests.reliability.suite import Suite, await_port


@dataclass
class Stack:
    suite: Suite
    backends: dict[str, str] = field(default_factory=dict)  # name -> address

    @property
    def ports(self) -> list[int]:
        return list(self.suite.proxy_ports.values())

    def admin(self, token: str = "") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.suite.admin_url, headers=headers, timeout=5.0)

    def loads(self, connections_per_port: int = 1, **kwargs: Any) -> list[Load]:
        return [Load("127.0.0.1", p, connections=connections_per_port, **kwargs) for p in self.ports]

    async def ready(self, timeout: float = 25.0) -> None:
        for port in self.ports:
            await await_port(port, timeout)
        await asyncio.gather(*(until_routes_to(p, set(self.backends), timeout) for p in self.ports))


async def start_stack(
    suite: Suite,
    *,
    backends: int = 2,
    proxies: int = 2,
    health: int = 1,
    discovery: int = 1,
    admin: bool = True,
    slow_backends: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    names = [chr(ord("A") + i) for i in range(backends)]
    ports = {n: free_port() for n in names}
    stack = Stack(suite, {n: f"127.0.0.1:{ports[n]}" for n in names})
    suite.backends = list(stack.backends.values())
    suite.write_config()
    for n in names:
        (suite.start_slow_backend if slow_backends else suite.start_backend)(n, ports[n])
    for i in range(discovery):
        suite.start("discovery", f"discovery-{i + 1}", extra_env)
    for i in range(health):
        suite.start("health", f"health-{i + 1}", extra_env)
    for i in range(proxies):
        suite.start_proxy(f"proxy-{i + 1}", extra_env=extra_env)
    if admin:
        suite.start("admin", "admin", extra_env)
        await await_port(suite.admin_port, 25)
    await stack.ready()
    return stack


async def run_loads(loads: list[Load]) -> LoadResult:
    """Stop every load and merge their results."""
    merged = LoadResult()
    for load in loads:
        r = await load.stop()
        merged.ok += r.ok
        merged.failed += r.failed
        merged.statuses.update(r.statuses)
        merged.errors.update(r.errors)
        merged.backends.update(r.backends)
        merged.latencies += r.latencies
        merged.timeline += r.timeline
    return merged
