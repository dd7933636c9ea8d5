"""Fixtures: backends started in-test and a proxy Server running in the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from services.proxy.balancer import StaticRoundRobin
from services.proxy.limits.gate import Gate
from services.proxy.main import static_pools
from services.proxy.server import Server
from shared.config import Config, load_config
from tests.integration.proxy.backends import Backend, Backends, RawCapture


def make_config(addresses: list[str], **settings: Any) -> Config:
    """A Config for the given backends; ``settings`` are nested dicts such as proxy={...}, timeout={...}."""
    raw: dict[str, Any] = {"listen_address": "127.0.0.1:1", "backends": [{"address": a} for a in addresses]}
    raw.update(settings)
    return msgspec.convert(raw, Config, dec_hook=lambda tp, obj: tp(obj))


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


StartProxy = Callable[..., Awaitable[Server]]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], object]]:
    """The proxy runs on uvloop in production: its tests do too."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    yield b
    await b.stop()


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    servers: list[Server] = []

    async def start(targets: list[Backend | RawCapture | str], **settings: Any) -> Server:
        addresses = [t if isinstance(t, str) else t.address for t in targets]
        config = make_config(addresses, **settings)
        server = Server(config, StaticRoundRobin.from_config(config), reuse_port=False)
        await server.start(free_socket())
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.stop(drain_sec=0.3)


StartYaml = Callable[[str], Awaitable[Server]]


@pytest.fixture
async def start_yaml(tmp_path: Path) -> AsyncIterator[StartYaml]:
    """A proxy Server from a config file's text, set up as ``services.proxy.main`` sets it up: the named
    pools (``static_pools``) and the rate-limit gate (``Gate.for_loop``)."""
    servers: list[Server] = []

    async def start(text: str) -> Server:
        path = tmp_path / f"proxy{len(servers)}.yaml"
        path.write_text(text)
        config = load_config(path, {})
        gate = Gate.for_loop(config.rate_limits, asyncio.get_running_loop())
        balancer = StaticRoundRobin.from_config(config)
        server = Server(config, balancer, reuse_port=False, pools=static_pools(config), gate=gate)
        await server.start(free_socket())
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.stop(drain_sec=0.3)
