"""Idle upstream connections kept per backend, bounded in number and in idle time.

Only connections the caller found clean (response fully read, backend did not say ``close``, no
unread bytes) are put back; a connection that closes or receives bytes while idle removes itself
through :meth:`Pool.discard`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Pooled(Protocol):
    @property
    def reusable(self) -> bool: ...

    def close(self) -> None: ...


class Pool:
    def __init__(self, size: int, idle_sec: float, loop: asyncio.AbstractEventLoop) -> None:
        self.size = size
        self.idle_sec = idle_sec
        self._loop = loop
        # address -> [(idle since, connection)], most recently used last (LIFO keeps warm connections).
        self._idle: dict[str, list[tuple[float, Pooled]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def get(self, address: str) -> Pooled | None:
        conns = self._idle.get(address)
        if not conns:
            return None
        deadline = self._loop.time() - self.idle_sec
        while conns:
            since, conn = conns.pop()
            if since >= deadline and conn.reusable:
                return conn
            conn.close()
        return None

    def put(self, address: str, conn: Pooled) -> None:
        conns = self._idle.get(address)
        if conns is None:
            conns = self._idle[address] = []
        if len(conns) >= self.size or not conn.reusable:
            conn.close()
            return
        conns.append((self._loop.time(), conn))
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(max(self.idle_sec / 2, 0.05), self._sweep)

    def discard(self, address: str, conn: Pooled) -> None:
        conns = self._idle.get(address)
        if conns:
            for i, (_, c) in enumerate(conns):
                if c is conn:
                    del conns[i]
                    return

    def forget(self, address: str) -> None:
        """A backend left: its idle connections are closed and its key goes (no growth with churn)."""
        for _, conn in self._idle.pop(address, ()):
            conn.close()

    def idle_count(self, address: str | None = None) -> int:
        if address is not None:
            return len(self._idle.get(address, ()))
        return sum(len(c) for c in self._idle.values())

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self._loop.time() - self.idle_sec
        remaining = 0
        for conns in self._idle.values():
            expired = [c for since, c in conns if since < deadline]
            if expired:
                conns[:] = [(s, c) for s, c in conns if s >= deadline]
                for c in expired:
                    c.close()
            remaining += len(conns)
        if remaining:
            self._sweeper = self._loop.call_later(max(self.idle_sec / 2, 0.05), self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for _, c in conns:
                c.close()
        self._idle.clear()
