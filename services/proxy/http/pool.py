"""Idle upstream connections kept per backend, bounded in number and in idle time.

Only connections the caller found clean (response fully read, backend did not say ``close``, no
unread bytes, nothing left to write) are put back, so ``get`` trusts what it holds: a connection
that closes or receives bytes while idle removes itself through :meth:`Pool.discard`, and one idle
longer than ``idle_sec`` is closed by a periodic sweep, not checked per request.

The HTTP fast path returns a connection with a bare ``append`` to ``idle[address]`` when that list
exists. That is enough because of two invariants kept here: a list exists only while the sweep is
armed (``put`` arms it when it creates one; the sweep deletes emptied lists before it stops), and
the sweep also trims a list to ``size`` (between sweeps a list holds at most one connection per
request that was in flight to that backend).
"""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, TypeVar


class Pooled(Protocol):
    idle_since: float

    @property
    def reusable(self) -> bool: ...

    def close(self) -> None: ...


P = TypeVar("P", bound=Pooled)


class Pool(Generic[P]):
    def __init__(self, size: int, idle_sec: float, loop: asyncio.AbstractEventLoop) -> None:
        self.size = size
        self.idle_sec = idle_sec
        self._loop = loop
        # address -> idle connections, most recently used last (LIFO keeps warm connections).
        self.idle: dict[str, list[P]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def get(self, address: str) -> P | None:
        conns = self.idle.get(address)
        return conns.pop() if conns else None

    def put(self, address: str, conn: P) -> None:
        conns = self.idle.get(address)
        if conns is None:
            conns = self.idle[address] = []
        if len(conns) >= self.size or not conn.reusable:
            conn.close()
            return
        conn.idle_since = self._loop.time()
        conns.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(max(self.idle_sec / 2, 0.05), self._sweep)

    def discard(self, address: str, conn: P) -> None:
        conns = self.idle.get(address)
        if conns:
            for i, c in enumerate(conns):
                if c is conn:
                    del conns[i]
                    return

    def forget(self, address: str) -> None:
        """The backend left: close its idle connections and drop its key."""
        for c in self.idle.pop(address, ()):
            c.close()

    def idle_count(self, address: str | None = None) -> int:
        if address is not None:
            return len(self.idle.get(address, ()))
        return sum(len(c) for c in self.idle.values())

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self._loop.time() - self.idle_sec
        remaining = 0
        for address, conns in list(self.idle.items()):
            expired = [c for c in conns if c.idle_since < deadline]
            if len(conns) - len(expired) > self.size:  # the oldest beyond the bound go too (LIFO: first)
                fresh = [c for c in conns if c.idle_since >= deadline]
                expired += fresh[: len(fresh) - self.size]
            if expired:
                gone = set(map(id, expired))
                conns[:] = [c for c in conns if id(c) not in gone]
                for c in expired:
                    c.close()
            if not conns:
                del self.idle[address]  # no key left behind for a backend with nothing idle
            remaining += len(conns)
        if remaining:
            self._sweeper = self._loop.call_later(max(self.idle_sec / 2, 0.05), self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self.idle.values():
            for c in conns:
                c.close()
        self.idle.clear()
