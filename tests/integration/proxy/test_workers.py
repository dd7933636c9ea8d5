"""`proxy.workers: N` runs N processes sharing the listener through SO_REUSEPORT."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from shared.redis_server import free_port
from tests.helpers import eventually
from tests.integration.observability.scrape import named, scrape
from tests.integration.proxy.backends import Backend, Backends, request
from tests.integration.proxy.test_process import proxy_process, wait_listening
from tests.integration.shared.test_launcher import _alive, _descendants

WORKERS = 3


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (worker i serves /metrics on the metrics port + i)."""
    for _ in range(50):
        base = free_port()
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {count} consecutive free ports")


async def requests_served(address: str) -> float | None:
    """The ``gobalancer_proxy_requests_total`` of the process serving /metrics at ``address``."""
    try:
        samples = await scrape(address)
    except OSError:
        return None
    return sum(named(samples, "gobalancer_proxy_requests_total").values())


async def test_workers_share_the_listener_and_stop_together(tmp_path: Path, backends: Backends) -> None:
    backend = await backends.add(Backend())
    metrics = free_ports(WORKERS)
    extra = f"proxy: {{workers: {WORKERS}}}\nmetrics: {{proxy_listen_address: '127.0.0.1:{metrics}'}}\n"
    with proxy_process(tmp_path, [backend.address], extra=extra) as (proc, port):
        await wait_listening(port)
        deadline = time.monotonic() + 15
        while len(_descendants(proc.pid)) < WORKERS - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _descendants(proc.pid)
        assert len(workers) == WORKERS - 1, "the main process plus two workers"
        addresses = [f"127.0.0.1:{metrics + i}" for i in range(WORKERS)]
        for address in addresses:  # every process listening (its /metrics starts after its listener)

            async def up(a: str = address) -> bool:
                return await requests_served(a) is not None

            await eventually(up, timeout=15, message=f"/metrics at {address}")
        before = [await requests_served(a) or 0.0 for a in addresses]
        raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        statuses = [(await request(port, raw)).status for _ in range(30)]
        assert statuses == [200] * 30
        served = [(await requests_served(a) or 0.0) - b for a, b in zip(addresses, before, strict=True)]
        # The kernel spreads the connections over the listeners: more than one process answered.
        assert sum(served) == 30, served
        assert sum(1 for n in served if n > 0) >= 2, f"requests per process: {served}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(workers)
