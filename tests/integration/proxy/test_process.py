"""The proxy as a process (`python -m services.proxy`): the shutdown sequence and graceful drain on SIGTERM,
1 GiB in bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from shared.redis_server import free_port
from tests.helpers import eventually, service_env
from tests.integration.proxy.backends import Backend, Backends, Request, echo, read_response, request, serving, slow
from tests.integration.proxy.conftest import StartProxy

ROOT = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def proxy_process(
    tmp_path: Path, backends: list[str], extra: str = ""
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    config = tmp_path / "proxy.yaml"
    lines = [f"listen_address: 127.0.0.1:{port}", "backends:"] + [f"  - address: {a}" for a in backends]
    config.write_text("\n".join(lines) + "\n" + extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.proxy", "--config", str(config)],
        cwd=ROOT,
        env=service_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def wait_listening(port: int) -> None:
    async def ready() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        w.close()
        return True

    await eventually(ready, timeout=10, message="proxy listening")


def rss_kib(proc: subprocess.Popen[bytes]) -> int:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    stderr = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr and proc.poll() is not None else ""
    raise AssertionError(f"proxy process gone (exit {proc.poll()}): {stderr}")


async def test_graceful_drain_under_load(tmp_path: Path, backends: Backends) -> None:
    b = await backends.add(Backend(slow(0.05)))
    with proxy_process(tmp_path, [b.address], "timeout:\n  drain_sec: 5\n") as (proc, port):
        await wait_listening(port)
        sent = answered = closed_by_proxy = 0
        signalled = asyncio.Event()
        after_signal = 0

        async def client() -> None:
            nonlocal sent, answered, closed_by_proxy, after_signal
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for _ in range(400):  # bounded; the drain ends it long before
                    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                    sent += 1
                    resp = await asyncio.wait_for(read_response(reader), 10)
                    assert resp.status == 200
                    answered += 1
                    after_signal += signalled.is_set()
                    if resp.header("Connection") == "close":
                        closed_by_proxy += 1
                        return
            finally:
                writer.close()

        tasks = [asyncio.create_task(client()) for _ in range(16)]
        await eventually(lambda: answered >= 100, timeout=20, message="load running")
        proc.send_signal(signal.SIGTERM)
        signalled.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == [] and sent == answered  # zero failed requests
        assert closed_by_proxy == 16  # every keep-alive connection was told to close
        assert after_signal >= 16  # requests in flight at SIGTERM were answered
        assert await asyncio.to_thread(proc.wait, 15) == 0


async def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET on a fresh connection (a minimal client: the metrics listener answers with Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
        resp = await asyncio.wait_for(read_response(reader), timeout)
        return resp.status, resp.body
    finally:
        writer.close()


async def ready_status(port: int) -> int:
    """GET /ready's status (0 while the metrics listener is not up yet)."""
    try:
        return (await http_get(port, "/ready"))[0]
    except OSError:
        return 0


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_shutdown_sequence_not_ready_then_serving_then_drained(tmp_path: Path, backends: Backends) -> None:
    """SIGTERM: /ready says 503 at once; during proxy.shutdown_delay_sec new connections are still served
    (each told to close); then the listener closes, an in-flight slow request completes and an idle
    keep-alive connection is closed."""
    delay = 2.0

    async def handler(backend: Backend, req: Request, w: asyncio.StreamWriter) -> bool:
        if req.target == "/slow":
            await asyncio.sleep(delay + 1.5)  # in flight through the whole delay and into the drain
        return await echo(backend, req, w)

    b = await backends.add(Backend(handler))
    metrics_port = free_port()
    extra = (
        f"proxy: {{shutdown_delay_sec: {delay}}}\ntimeout: {{drain_sec: 10}}\n"
        f"metrics: {{proxy_listen_address: '127.0.0.1:{metrics_port}'}}\n"
    )
    with proxy_process(tmp_path, [b.address], extra) as (proc, port):
        await wait_listening(port)
        await eventually(lambda: ready_status(metrics_port), timeout=10, message="metrics listener up")
        assert await http_get(metrics_port, "/ready") == (200, b"ready\n")
        # Two keep-alive connections (one stays idle, one is used during the delay), and a slow request in flight.
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        idle_w.write(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await asyncio.wait_for(read_response(idle_r), 5)).status == 200
        used_r, used_w = await asyncio.open_connection("127.0.0.1", port)
        used_w.write(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await asyncio.wait_for(read_response(used_r), 5)).header("Connection") is None  # kept alive
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        slow_w.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        await eventually(lambda: any(r.target == "/slow" for r in b.requests), message="slow request at the backend")

        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        status, body = await http_get(metrics_port, "/ready")  # the metrics listener stays up throughout
        assert (status, body) == (503, b"not ready: stopping\n")
        assert time.monotonic() - signalled < 1.0, "not-ready must be reported at once"

        # During the delay: a keep-alive connection's next response closes it (its client reconnects)...
        used_w.write(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await asyncio.wait_for(read_response(used_r), 5)
        assert resp.status == 200 and resp.header("Connection") == "close"
        assert await asyncio.wait_for(used_r.read(), 5) == b""
        used_w.close()
        # ...and new connections are accepted and served, and told to close.
        served = 0
        while time.monotonic() - signalled < delay - 0.5:
            resp = await request(port, b"GET /during HTTP/1.1\r\nHost: h\r\n\r\n")
            assert resp.status == 200
            assert resp.header("Connection") == "close"
            served += 1
            await asyncio.sleep(0.1)
        assert served >= 5
        assert (await http_get(metrics_port, "/ready"))[0] == 503

        # After it: the listener is closed...
        await eventually(lambda: refused(port), timeout=delay + 2, message="listener closed after the delay")
        assert time.monotonic() - signalled >= delay - 0.1
        # ...the idle keep-alive connection is closed cleanly (EOF, no reset)...
        assert await asyncio.wait_for(idle_r.read(), 5) == b""
        assert time.monotonic() - signalled >= delay - 0.1
        # ...and the slow request in flight completes, with Connection: close.
        resp = await asyncio.wait_for(read_response(slow_r), 10)
        assert resp.status == 200 and resp.header("Connection") == "close"
        idle_w.close()
        slow_w.close()
        assert await asyncio.to_thread(proc.wait, 15) == 0


def test_shutdown_delay_defaults_to_zero() -> None:
    """A proxy not told otherwise (tests, `gobalancer up`) stops at once; the stacks set the delay."""
    from shared.config import load_config

    assert load_config(None, environ={}).proxy.shutdown_delay_sec == 0.0


@contextlib.asynccontextmanager
async def sink_and_source(size: int) -> AsyncIterator[str]:
    """POST: reads the body (discarding it) and answers its length; GET: sends ``size`` zero bytes."""
    block = bytes(256 * 1024)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"POST"):
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    got = 0
                    while got < length:
                        data = await reader.read(min(length - got, 1 << 20))
                        if not data:
                            return
                        got += len(data)
                    answer = str(got).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    left = size
                    while left:
                        n = min(left, len(block))
                        writer.write(block if n == len(block) else block[:n])
                        left -= n
                        await writer.drain()
                await writer.drain()
        writer.close()

    async with serving(serve) as address:
        yield address


async def test_one_gib_both_ways_in_bounded_memory(tmp_path: Path) -> None:
    size = 1 << 30
    async with sink_and_source(size) as address:
        with proxy_process(tmp_path, [address]) as (proc, port):
            await wait_listening(port)
            base = rss_kib(proc)
            peak = base

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, rss_kib(proc))
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # Download, read slowly at first (the proxy must not buffer the response), then fast.
            writer.write(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % size in head
            got = 0
            for _ in range(20):
                got += len(await reader.read(65536))
                await asyncio.sleep(0.01)
            while got < size:
                data = await reader.read(1 << 20)
                assert data
                got += len(data)
            assert got == size
            # Upload on the same keep-alive connection.
            writer.write(b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
            block = bytes(1 << 20)
            for _ in range(size // len(block)):
                writer.write(block)
                await writer.drain()
            resp = await asyncio.wait_for(read_response(reader), 60)
            assert resp.status == 200 and resp.body == str(size).encode()
            writer.close()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            peak = max(peak, rss_kib(proc))
            assert peak - base < 48 * 1024, f"proxy RSS grew from {base} KiB to {peak} KiB"


async def test_a_request_arriving_during_the_delay_is_drained_too(start_proxy: StartProxy, backends: Backends) -> None:
    """Connections that came and went during the shutdown delay do not make the drain think all is done."""
    b = await backends.add(Backend(slow(1.0)))
    proxy = await start_proxy([b.address])
    proxy.begin_shutdown(5.0)
    resp = await request(proxy.port, b"GET /quick HTTP/1.1\r\nHost: h\r\n\r\n")  # connection opened and closed
    assert resp.status == 200 and resp.header("Connection") == "close"
    await eventually(lambda: not proxy.context.connections, message="no connection left")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    await eventually(lambda: len(b.requests) == 2, message="the second request at the backend")
    await proxy.stop(drain_sec=5)
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    writer.close()


async def test_the_proxy_process_binds_its_listeners_and_routes(tmp_path: Path, backends: Backends) -> None:
    """``python -m services.proxy`` with pools, routes and ``listeners:``: every listener serves, each its way,
    and SIGTERM stops them all."""
    web = await backends.add(Backend(name="web"))
    api = await backends.add(Backend(name="api"))
    tcp_port, http_port = free_port(), free_port()
    extra = f"""pools:
  api: {{backends: [{{address: "{api.address}"}}]}}
routes:
  - {{name: api, host: api.example.com, pool: api}}
default_pool: default
listeners:
  - {{listen_address: "127.0.0.1:{tcp_port}", mode: tcp, pool: api}}
  - {{listen_address: "127.0.0.1:{http_port}", pool: default}}
"""
    with proxy_process(tmp_path, [web.address], extra) as (proc, port):
        for p in (port, tcp_port, http_port):
            await wait_listening(p)
        routed = await request(port, b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        other = await request(port, b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        relayed = await request(tcp_port, b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        pinned = await request(http_port, b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        backend = [r.header("X-Backend") for r in (routed, other, relayed, pinned)]
        assert backend == ["api", "web", "api", "web"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
