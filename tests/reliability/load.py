"""A steady HTTP/1.1 load on loopback: bounded in count and time, counting every failure."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    backends: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    timeline: list[tuple[float, str, bool]] = field(default_factory=list)  # (t, backend, ok)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def p(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(c[:-2] for c in chunks)
    return status, headers, body


async def held_request(port: int, delay: float) -> tuple[int, str]:
    """A GET the backend holds for ``delay`` seconds (it stays in flight on the proxy): (status, X-Backend)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /?delay={delay} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, _ = await asyncio.wait_for(_read_response(reader), delay + 10)
        return status, headers.get("x-backend", "")
    finally:
        writer.close()


class Load:
    """``connections`` keep-alive clients sending GETs until stopped or ``max_requests``/``max_seconds``.

    A request fails when the connection errs or the status is >= 500. A client whose connection
    drops reconnects and goes on (a closed idle keep-alive connection is retried once, as
    browsers and HTTP clients do for idempotent requests).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int = 4,
        max_requests: int = 200_000,
        max_seconds: float = 120.0,
        path: str = "/",
        rate_per_connection: float | None = None,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.connections = connections
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.interval = 1.0 / rate_per_connection if rate_per_connection else 0.0
        self.result = LoadResult()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = 0.0

    async def _client(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        deadline = self._started + self.max_seconds
        request = f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()
        while not self._stop.is_set() and time.monotonic() < deadline and self.result.total < self.max_requests:
            t0 = time.monotonic()
            outcome: str | None = None
            backend = ""
            for attempt in range(2):
                fresh = writer is None
                try:
                    if writer is None:
                        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
                    assert reader is not None and writer is not None
                    writer.write(request)
                    status, headers, _ = await asyncio.wait_for(_read_response(reader), 10)
                    backend = headers.get("x-backend", "")
                    self.result.statuses[status] += 1
                    outcome = None if status < 500 else f"status {status}"
                    if headers.get("connection", "").lower() == "close":
                        writer.close()
                        writer = None
                    break
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    if writer is not None:
                        writer.close()
                    writer = None
                    outcome = type(exc).__name__
                    if fresh or attempt == 1:
                        break  # a fresh connection failed: a real failure
            elapsed = time.monotonic() - t0
            self.result.timeline.append((t0 - self._started, backend, outcome is None))
            if outcome is None:
                self.result.ok += 1
                self.result.latencies.append(elapsed)
                self.result.backends[backend] += 1
            else:
                self.result.failed += 1
                self.result.errors[outcome] += 1
                await asyncio.sleep(0.01)
            if self.interval:
                await asyncio.sleep(max(0.0, self.interval - elapsed))
        if writer is not None:
            writer.close()

    def start(self) -> Load:
        self._started = time.monotonic()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.connections)]
        return self

    async def stop(self) -> LoadResult:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return self.result

    async def __aenter__(self) -> Load:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
