"""Observing routing from outside: which backend answers a replica, and when a change takes effect."""

from __future__ import annotations

import asyncio
import time

from tests.reliability.load import _read_response


class Prober:
    """One keep-alive client to one proxy port, sending GETs one at a time."""

    def __init__(self, port: int, path: str = "/") -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def backend(self, timeout: float = 5.0) -> str | None:
        """The X-Backend of one response (None on a connection error or a 5xx)."""
        for _ in range(2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), timeout
                    )
                assert self.reader is not None and self.writer is not None
                self.writer.write(self.request)
                status, headers, _ = await asyncio.wait_for(_read_response(self.reader), timeout)
                if headers.get("connection", "").lower() == "close":
                    self.close()
                return headers.get("x-backend") if status < 500 else None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                self.close()
        return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def seen(self, count: int) -> set[str | None]:
        return {await self.backend() for _ in range(count)}

    async def until_only(self, allowed: set[str], run: int = 6, timeout: float = 10.0) -> float:
        """Monotonic time of the first of ``run`` consecutive responses all from ``allowed``."""
        deadline = time.monotonic() + timeout
        streak_start: float | None = None
        streak = 0
        while time.monotonic() < deadline:
            t = time.monotonic()
            name = await self.backend()
            if name in allowed:
                if streak == 0:
                    streak_start = t
                streak += 1
                if streak >= run:
                    assert streak_start is not None
                    return streak_start
            else:
                streak = 0
            await asyncio.sleep(0.005)
        raise AssertionError(f"port {self.port}: traffic did not settle on {allowed} within {timeout}s")


async def until_routes_to(port: int, names: set[str], timeout: float = 20.0) -> None:
    """Wait until a proxy port has answered from every backend in ``names``."""
    prober = Prober(port)
    seen: set[str | None] = set()
    deadline = time.monotonic() + timeout
    try:
        while not names <= seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} answered only from {seen}, expected {names}")
            seen.add(await prober.backend())
            await asyncio.sleep(0.02)
    finally:
        prober.close()


async def propagation(ports: list[int], allowed: set[str], since: float, timeout: float = 10.0) -> list[float]:
    """For each port, seconds from ``since`` until it routes only to ``allowed`` (measured concurrently)."""
    probers = [Prober(p) for p in ports]
    try:
        times = await asyncio.gather(*(p.until_only(allowed, timeout=timeout) for p in probers))
    finally:
        for p in probers:
            p.close()
    return [max(0.0, t - since) for t in times]
