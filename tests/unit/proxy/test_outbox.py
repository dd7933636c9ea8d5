"""The outbox (services/proxy/outbox.py), C and Python twins alike, on real loopback connections: writes
queued during a turn leave together at the start of the next, in order; one callback per turn; a
transport closing by then gets nothing; an error in one write does not stop the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.proxy.http import fast
from services.proxy.outbox import OutboxPy

KINDS: dict[str, Any] = {"python": OutboxPy}
if fast.EXTENSION is not None:
    KINDS["c"] = fast.EXTENSION.Outbox


class Sink:
    """A loopback server that keeps what each connection sent."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.changed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        self.received.append(buf)
        self.changed.set()
        while data := await reader.read(65536):
            buf += data
            self.changed.set()
        writer.close()

    async def until(self, expected: list[bytes]) -> None:
        async with asyncio.timeout(5):
            while sorted(bytes(b) for b in self.received) != sorted(expected):
                self.changed.clear()
                await self.changed.wait()

    async def connections(self, n: int) -> None:
        async with asyncio.timeout(5):
            while len(self.received) < n:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Sink, list[asyncio.Transport]]]:
    s = Sink()
    server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(3):
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transports.append(transport)
    await s.connections(3)
    yield s, transports
    for t in transports:
        t.abort()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("kind", KINDS)
async def test_writes_of_a_turn_leave_together_in_order(kind: str, sink: tuple[Sink, list[Any]]) -> None:
    s, (a, b, c) = sink
    loop = asyncio.get_running_loop()
    scheduled = 0
    call_soon = loop.call_soon

    def counting_call_soon(callback: Any, *args: Any) -> asyncio.Handle:
        nonlocal scheduled
        scheduled += 1
        return call_soon(callback, *args)

    loop.call_soon = counting_call_soon  # type: ignore[method-assign,assignment]
    try:
        outbox = KINDS[kind](loop)
    finally:
        del loop.call_soon  # (the Outbox took the bound method at construction)
    outbox.write(a, b"a1 ")
    outbox.write(b, b"b1 ")
    outbox.write(a, b"a2 ")
    outbox.write(c, b"c1 ")
    outbox.write(a, b"a3")
    assert scheduled == 1  # one callback for the whole turn
    assert len(outbox.items) == 10
    assert a.get_write_buffer_size() == 0 and s.received == [bytearray()] * 3  # nothing written yet
    await asyncio.sleep(0)  # the turn ends: the callback runs
    assert outbox.items == []
    await s.until([b"a1 a2 a3", b"b1 ", b"c1 "])
    outbox.write(b, b"b2")  # a new turn: a new callback
    assert scheduled == 2
    outbox.flush()  # early (as before a close): sent now
    await asyncio.sleep(0)  # the turn ends: the callback scheduled by that write finds nothing left
    await s.until([b"a1 a2 a3", b"b1 b2", b"c1 "])


@pytest.mark.parametrize("kind", KINDS)
async def test_a_closing_transport_gets_nothing_and_a_failing_write_stops_no_other(
    kind: str, sink: tuple[Sink, list[Any]]
) -> None:
    s, (a, b, c) = sink

    class Refusing:  # a transport whose write raises (a bug elsewhere): the others still get theirs
        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes) -> None:
            raise RuntimeError("refused")

    outbox = KINDS[kind](asyncio.get_running_loop())
    outbox.write(a, b"to a")
    outbox.write(Refusing(), b"x")
    outbox.write(b, b"to b")
    outbox.write(c, b"never")
    c.close()
    with pytest.raises(RuntimeError, match="refused"):
        outbox.flush()
    await s.until([b"to a", b"to b", b""])
