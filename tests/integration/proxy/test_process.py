"""The proxy as a process (`python -m services.proxy`): graceful drain on SIGTERM, 1 GiB in bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from shared.redis_server import free_port
from tests.helpers import eventually, service_env
from tests.integration.proxy.backends import Backend, Backends, read_response, serving, slow

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
