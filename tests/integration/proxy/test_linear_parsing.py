"""Every parse is linear in its input: worst-case lines at the size limits never stall the event loop.

The guard for issue 15's denial of service (one 32 KB header line of spaces ending in a control byte
froze a worker for 11.5 s). Each case sends a hostile message through a real proxy and its real
sockets, while a ticker on the same event loop records the CPU time the loop spent between two of
its ticks: the longest run of work with no chance for another connection to be served. Thread CPU
time, not wall time: a test machine that deschedules the process is not a stall of the proxy.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from services.proxy.http.upstream import MAX_RESPONSE_HEAD
from shared.gc_tuning import tune_gc
from tests.helpers import LoopStalls
from tests.integration.proxy.backends import Backend, Backends, exchange_raw, request, serving
from tests.integration.proxy.conftest import StartProxy

STALL_LIMIT = 0.020  # seconds of loop CPU between two ticks
MAX_HEAD = 32768  # proxy.max_header_bytes (the default)


def _line(size: int, tail: bytes) -> bytes:
    """A header value of ``size`` bytes: whitespace patterns that made the old expressions backtrack."""
    return b" " * (size - len(tail)) + tail


# Values that end in a control byte after a long run of whitespace, or alternate whitespace and
# visible characters: each was O(n²) in the former header-line expression.
PATTERNS: dict[str, Callable[[int], bytes]] = {
    "spaces-then-ctl": lambda n: _line(n, b"\x01"),
    "spaces-visible-ctl": lambda n: _line(n, b"a\x01"),
    "tabs-then-ctl": lambda n: b"\t" * (n - 1) + b"\x7f",
    "word-space-runs": lambda n: b"a " * (n // 2 - 1) + b"\x00",
}


@pytest.fixture(autouse=True)
def interpreter_as_a_proxy_sets_it() -> Iterator[None]:
    """The proxy runs in this test's process: the interpreter is set up as a proxy sets itself up at
    start-up (``shared.gc_tuning.tune_gc``: what is alive is collected and frozen). Otherwise a full
    collection of the test session's own objects (tens of milliseconds late in a long run) would be
    counted as a stall of the parse; the test process's settings are restored afterwards."""
    interval = sys.getswitchinterval()
    tune_gc()
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        gc.unfreeze()


@pytest.fixture
async def proxy_port(backends: Backends, start_proxy: StartProxy) -> AsyncIterator[int]:
    b = await backends.add(Backend())
    proxy = await start_proxy([b])
    yield proxy.port


async def _normal_get(port: int) -> None:
    resp = await request(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.status == 200


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
async def test_request_head_at_the_limit(proxy_port: int, pattern: str) -> None:
    prefix = b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: "
    value = PATTERNS[pattern](MAX_HEAD - len(prefix) - 8)
    raw = prefix + value + b"\r\n\r\n"
    assert len(raw) <= MAX_HEAD
    with LoopStalls() as stalls:
        answer, _ = await asyncio.gather(exchange_raw(proxy_port, raw), _normal_get(proxy_port))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
    assert stalls.worst < STALL_LIMIT, f"the loop stalled {stalls.worst * 1000:.1f} ms"


async def test_request_head_trickled_byte_groups(proxy_port: int) -> None:
    """A head that arrives in many small reads is scanned once, not once per read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    head = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Long: " + b"a" * (MAX_HEAD - 200)
    with LoopStalls() as stalls:
        for i in range(0, len(head), 64):
            writer.write(head[i : i + 64])
            await writer.drain()
        writer.write(b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
    assert stalls.worst < STALL_LIMIT, f"the loop stalled {stalls.worst * 1000:.1f} ms"


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
async def test_request_trailer_at_the_limit(proxy_port: int, pattern: str) -> None:
    value = PATTERNS[pattern](4000)
    raw = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: " + value + b"\r\n\r\n"
    )
    with LoopStalls() as stalls:
        answer, _ = await asyncio.gather(exchange_raw(proxy_port, raw), _normal_get(proxy_port))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
    assert stalls.worst < STALL_LIMIT, f"the loop stalled {stalls.worst * 1000:.1f} ms"


async def test_request_trailer_section_is_bounded(proxy_port: int) -> None:
    """Many valid trailer lines: refused once the section passes the header limit (not read forever)."""
    lines = b"X-T: v\r\n" * (MAX_HEAD // 8 + 10)
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + lines + b"\r\n"
    with LoopStalls() as stalls:
        answer = await exchange_raw(proxy_port, raw)
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answer[:80]
    assert stalls.worst < STALL_LIMIT, f"the loop stalled {stalls.worst * 1000:.1f} ms"


def _hostile_backend(response: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        await reader.read(-1)
        writer.close()

    return serve


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
async def test_response_head_at_the_limit(backends: Backends, start_proxy: StartProxy, pattern: str) -> None:
    prefix = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Long: "
    value = PATTERNS[pattern](MAX_RESPONSE_HEAD - len(prefix) - 8)
    good = await backends.add(Backend())
    async with serving(_hostile_backend(prefix + value + b"\r\n\r\n")) as hostile:
        proxy = await start_proxy([hostile], proxy={"retries": 0})
        other = await start_proxy([good])
        with LoopStalls() as stalls:
            answer, _ = await asyncio.gather(
                exchange_raw(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
                _normal_get(other.port),
            )
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:80]
    assert stalls.worst < STALL_LIMIT, f"the loop stalled {stalls.worst * 1000:.1f} ms"


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
async def test_response_trailer_at_the_limit(backends: Backends, start_proxy: StartProxy, pattern: str) -> None:
    value = PATTERNS[pattern](4000)
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: " + value + b"\r\n\r\n"
    async with serving(_hostile_backend(response)) as hostile:
        proxy = await start_proxy([hostile], proxy={"retries": 0})
        with LoopStalls() as stalls:
            answer = await exchange_raw(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    # Refused before anything reached the client: 502; after the head went out: cut short, never a last chunk.
    if not answer.startswith(b"HTTP/1.1 502 "):
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
        assert not answer.endswith(b"0\r\n\r\n")
    assert stalls.worst < STALL_LIMIT, f"the loop stalled {stalls.worst * 1000:.1f} ms"
