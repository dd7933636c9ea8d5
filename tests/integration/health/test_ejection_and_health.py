"""Passive ejection and active health are two signals (issue 17.1).

A backend answering 500 passes a TCP probe. Once a proxy has ejected it, the health service (the real
process, TCP checks every 0.1 s) probing it must not end the ejection: it lasts its configured time,
then the backend is back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from services.proxy.store_balancer import StoreBalancer, open_store_balancer
from shared.config import Config, OutlierConfig, Seconds
from shared.models import Backend
from shared.processes import stop_process
from shared.store import Store
from tests.helpers import eventually, service_env

EJECTION_SEC = 1.5


class Listener:
    """A TCP backend that counts the connections it accepts (the health service's probes)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> Listener:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def listeners() -> AsyncIterator[list[Listener]]:
    pair = [await Listener().start(), await Listener().start()]
    yield pair
    for listener in pair:
        listener.close()


def picked(balancer: StoreBalancer, tries: int = 8) -> set[str]:
    out: set[str] = set()
    for i in range(tries):
        upstream = balancer.pick(str(i))
        if upstream is not None:
            out.add(upstream.address)
            balancer.finished(upstream, True, 0.001)
    return out


async def test_passing_probes_do_not_cut_an_ejection_short(
    redis_url: str, namespace: str, store: Store, listeners: list[Listener]
) -> None:
    bad, good = listeners
    for listener in listeners:
        await store.create_backend(Backend(address=listener.address))
    health = subprocess.Popen(
        [sys.executable, "-m", "services.health"],
        env=service_env(
            GOBALANCER_REDIS_URL=redis_url,
            GOBALANCER_REDIS_NAMESPACE=namespace,
            GOBALANCER_HEALTH_CHECK_TYPE="tcp",
            GOBALANCER_HEALTH_CHECK_INTERVAL_SEC="0.1",
            GOBALANCER_HEALTH_CHECK_RISE="1",
            GOBALANCER_METRICS_HEALTH_LISTEN_ADDRESS="",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = Config()
    config.redis.url, config.redis.namespace = redis_url, namespace
    config.balancing.outlier = OutlierConfig(
        consecutive_failures=3, base_ejection_sec=Seconds(EJECTION_SEC), max_ejection_percent=50
    )
    own = Store.from_url(redis_url, namespace)
    try:
        async with open_store_balancer(config, own) as balancer:
            both = {bad.address, good.address}
            await eventually(lambda: picked(balancer) == both, timeout=20, message="both backends up and in use")
            upstream = balancer._upstreams[bad.address]
            for _ in range(3):  # what the proxy does on three 500s in a row
                balancer.started(upstream)
                balancer.finished(upstream, False, 0.001)
            ejected_at = time.time()

            async def published() -> bool:
                view = await store.get_backend(bad.address)
                return view is not None and view.ejected()

            await eventually(published, timeout=2, message="the ejection reached the store")
            probes_before = bad.accepted
            # While the ejection lasts: still in the store, never picked, and the probes keep passing.
            while time.time() < ejected_at + EJECTION_SEC - 0.2:
                view = await store.get_backend(bad.address)
                assert view is not None and view.ejection is not None and view.ejected(), (
                    f"ejection gone {time.time() - ejected_at:.2f}s after it was decided (configured {EJECTION_SEC}s)"
                )
                assert view.health.status == "up"
                assert bad.address not in picked(balancer)
                await asyncio.sleep(0.05)  # a sampling period, not a synchronisation
            assert bad.accepted - probes_before >= 5, "the health service kept probing the ejected backend"
            # At its own end the backend is back: health says up and no ejection is in force.
            await eventually(
                lambda: bad.address in picked(balancer), timeout=EJECTION_SEC, message="back after the ejection"
            )
            assert time.time() >= ejected_at + EJECTION_SEC - 0.05
    finally:
        await own.close()
        assert await asyncio.to_thread(stop_process, health) == 0
