"""`proxy.workers: N` runs N processes sharing the listener through SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
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
        await eventually(lambda: len(_descendants(proc.pid)) >= WORKERS - 1, timeout=15, message="the workers")
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
        # proxy.cpu_affinity (the default): process i on the i-th usable CPU, modulo their number.
        cpus = sorted(os.sched_getaffinity(0))
        pinned = [os.sched_getaffinity(pid) for pid in [proc.pid, *sorted(workers)]]
        assert pinned == [{cpus[i % len(cpus)]} for i in range(WORKERS)], pinned
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        await eventually(lambda: not _alive(workers), timeout=10, message="the workers stopped")


def _two_free_ports() -> int:
    """A port p with p + 1 free too (worker 1 serves its /metrics on the metrics port + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def _json_events(text: str) -> list[dict[str, object]]:
    """The JSON log lines of the parent and its workers (they share stderr: a line may hold two objects)."""
    decoder = json.JSONDecoder()
    events, i = [], text.find("{")
    while i >= 0:
        try:
            event, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(event, dict):
            events.append(event)
        i = text.find("{", end)
    return events


def _worker_requests(metrics_port: int) -> float:
    """gobalancer_proxy_requests_total of the process serving /metrics on ``metrics_port``."""
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith("gobalancer_proxy_requests_total "):
            return float(line.split()[1])
    raise AssertionError("no gobalancer_proxy_requests_total in /metrics")


async def test_a_killed_worker_is_restarted_and_logged(tmp_path: Path, backends: Backends) -> None:
    backend = await backends.add(Backend())
    metrics_port = _two_free_ports()
    extra = f"proxy: {{workers: 2}}\nmetrics: {{proxy_listen_address: '127.0.0.1:{metrics_port}'}}\n"
    with proxy_process(tmp_path, [backend.address], extra=extra) as (proc, port):
        await wait_listening(port)
        await eventually(lambda: _descendants(proc.pid), timeout=15, message="the worker")
        (worker,) = _descendants(proc.pid)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        await eventually(lambda: _alive(_descendants(proc.pid)) - {worker}, timeout=10, message="a new worker")
        (replacement,) = _alive(_descendants(proc.pid)) - {worker}
        assert time.monotonic() - killed < 5, "a worker that had run is restarted at once"

        # The new worker serves: it binds the shared port and counts requests on its own /metrics (port + 1).
        async def new_worker_served() -> bool:
            raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            for _ in range(10):
                assert (await request(port, raw)).status == 200
            try:
                return _worker_requests(metrics_port + 1) > 0
            except OSError:
                return False

        await eventually(new_worker_served, timeout=15, message="the restarted worker serving requests")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert proc.stderr is not None
        lines = _json_events(proc.stderr.read().decode())
        died = [e for e in lines if e.get("event") == "worker died: restarting it"]
        assert len(died) == 1, lines
        assert died[0]["pid"] == worker and died[0]["died_of"] == "signal SIGKILL" and died[0]["level"] == "error"
        assert died[0]["restart_in_sec"] == 0
        assert any(e.get("event") == "worker restarted" and e.get("pid") == replacement for e in lines)
        assert not _alive({replacement})


def test_restart_backoff_doubles_up_to_a_ceiling() -> None:
    from services.proxy.workers import BACKOFF_MAX_SEC, restart_delay

    assert [restart_delay(n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == BACKOFF_MAX_SEC


def _ready_status(port: int) -> int:
    """The status of GET /ready on a metrics listener (0: not listening yet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /ready HTTP/1.1\r\nHost: h\r\n\r\n")
            return int(sock.recv(64).split(b" ")[1])
    except OSError:
        return 0


def _ready_is(port: int, status: int) -> Callable[[], bool]:
    """A check that GET /ready on ``port`` answers ``status`` (for :func:`eventually`)."""
    return lambda: _ready_status(port) == status


async def test_sigterm_reaches_the_workers_at_once(tmp_path: Path, backends: Backends) -> None:
    """The parent forwards SIGTERM when it gets it, not after its own delay and drain: every process says
    not-ready at once and serves through the same delay."""
    backend = await backends.add(Backend())
    metrics_port = _two_free_ports()
    extra = (
        f"proxy: {{workers: 2, shutdown_delay_sec: 3}}\nmetrics: {{proxy_listen_address: '127.0.0.1:{metrics_port}'}}\n"
    )
    with proxy_process(tmp_path, [backend.address], extra=extra) as (proc, port):
        await wait_listening(port)
        for p in (metrics_port, metrics_port + 1):
            await eventually(_ready_is(p, 200), timeout=15, message=f"/ready on {p}")
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await eventually(lambda: _ready_status(metrics_port + 1) == 503, timeout=1, message="the worker not ready")
        assert _ready_status(metrics_port) == 503
        assert time.monotonic() - signalled < 1.5
        raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert [(await request(port, raw)).status for _ in range(10)] == [200] * 10  # still serving, both
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert time.monotonic() - signalled >= 3
