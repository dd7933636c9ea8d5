"""TCP mode: relay with half-close, connect retry, PROXY protocol v1/v2."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from services.proxy.stats import CLASS_NAMES, TCP_RELAYED, StatsTotals
from services.proxy.tcp import PROXY_V2_SIGNATURE, proxy_header
from tests.helpers import eventually
from tests.integration.proxy.backends import serving
from tests.integration.proxy.conftest import StartProxy
from tests.integration.proxy.test_http import unused_address


@contextlib.asynccontextmanager
async def upper_after_eof(received: list[bytes]) -> AsyncIterator[str]:
    """Reads until the client's half-close, then answers everything upper-cased and closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(-1)
        received.append(data)
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    async with serving(serve) as address:
        yield address


async def relay(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()  # half-close: the answer must still come back
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    return data


async def test_relay_with_half_close_and_retry(start_proxy: StartProxy) -> None:
    received: list[bytes] = []
    async with upper_after_eof(received) as address:
        unused = unused_address()
        proxy = await start_proxy([unused, address], mode="tcp")
        payload = b"hello tcp " * 100_000  # ~1 MB
        for _ in range(2):  # one of the two picks hits the refused backend first
            assert await relay(proxy.port, payload) == payload.upper()
        assert received == [payload, payload]
        assert proxy.context.stats.connect_failures >= 1
        # Per backend (what /metrics and the store's request totals read): relayed "tcp", failed "error".
        await eventually(lambda: proxy.context.stats.backend(address).classes[TCP_RELAYED] == 2)
        classes = dict(zip(CLASS_NAMES, proxy.context.stats.backend(address).classes, strict=True))
        assert classes == {**dict.fromkeys(CLASS_NAMES, 0), "tcp": 2}
        totals = StatsTotals(proxy.context.stats).take_totals()
        assert totals[f"{address}|tcp"] == 2 and totals[f"{unused}|error"] >= 1


def parse_v2(data: bytes) -> tuple[str, str, int, int, bytes]:
    assert data[:12] == PROXY_V2_SIGNATURE and data[12] == 0x21 and data[13] == 0x11
    (length,) = struct.unpack("!H", data[14:16])
    body = data[16 : 16 + length]
    src, dst = ipaddress.IPv4Address(body[:4]), ipaddress.IPv4Address(body[4:8])
    sport, dport = struct.unpack("!HH", body[8:12])
    return str(src), str(dst), sport, dport, data[16 + length :]


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_protocol_header(start_proxy: StartProxy, version: str) -> None:
    received: list[bytes] = []
    async with upper_after_eof(received) as address:
        proxy = await start_proxy([address], mode="tcp", proxy={"proxy_protocol": version})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        client_port = writer.get_extra_info("sockname")[1]
        writer.write(b"payload")
        writer.write_eof()
        await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
    data = received[0]
    if version == "v1":
        line, _, rest = data.partition(b"\r\n")
        assert line == b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d" % (client_port, proxy.port)
    else:
        src, dst, sport, dport, rest = parse_v2(data)
        assert (src, dst, sport, dport) == ("127.0.0.1", "127.0.0.1", client_port, proxy.port)
    assert rest == b"payload"


def test_proxy_header_ipv6() -> None:
    assert proxy_header("v1", ("::1", 5), ("::1", 6)) == b"PROXY TCP6 ::1 ::1 5 6\r\n"
    v2 = proxy_header("v2", ("::1", 5), ("127.0.0.1", 6))
    assert v2[13] == 0x21 and struct.unpack("!H", v2[14:16])[0] == 36


async def test_a_client_gone_during_the_connect_leaves_no_inflight_count(start_proxy: StartProxy) -> None:
    """A client dropped while the proxy is still connecting to the backend (here by the client idle
    timeout; the proxy does not read from the client until the backend answers)."""
    # A listener whose accept queue is full and never drained: a further connect hangs (SYN dropped).
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(hung.getsockname())
        fillers.append(s)
    address = f"127.0.0.1:{hung.getsockname()[1]}"
    proxy = await start_proxy([address], mode="tcp", timeout={"connect_timeout": 30, "client_idle_sec": 0.3})
    balancer = proxy.balancer
    try:
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await eventually(  # the proxy is connecting to the backend now
                lambda: getattr(balancer, "inflight", {}).get(address, 0) >= 1, timeout=2, message="connecting"
            )
            writer.transport.abort()
        await eventually(
            lambda: getattr(balancer, "inflight", {}).get(address, 0) == 0, timeout=2, message="in-flight back to 0"
        )
    finally:
        for s in fillers:
            s.close()
        hung.close()


# -- PROXY protocol accepted from a trusted front (proxy.proxy_protocol_from) ---------------------------


@pytest.mark.parametrize("incoming", ["v1", "v2"])
async def test_proxy_header_from_a_trusted_front_names_the_client(start_proxy: StartProxy, incoming: str) -> None:
    """The client's address from the incoming header reaches the backend (here in the header the proxy sends
    on); the incoming header itself is not relayed, and a header split over many writes is reassembled."""
    received: list[bytes] = []
    async with upper_after_eof(received) as address:
        proxy = await start_proxy(
            [address], mode="tcp", proxy={"proxy_protocol": "v1", "proxy_protocol_from": ["127.0.0.0/8"]}
        )
        header = proxy_header(incoming, ("198.51.100.7", 40000), ("203.0.113.1", 443))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        for i in range(len(header)):  # one byte at a time
            writer.write(header[i : i + 1])
            await writer.drain()
        writer.write(b"payload")
        writer.write_eof()
        assert (
            await asyncio.wait_for(reader.read(-1), 10) == b"PROXY TCP4 198.51.100.7 203.0.113.1 40000 443\r\nPAYLOAD"
        )
        writer.close()
    assert received == [b"PROXY TCP4 198.51.100.7 203.0.113.1 40000 443\r\npayload"]


async def test_a_bad_proxy_header_from_a_trusted_peer_closes_the_connection(start_proxy: StartProxy) -> None:
    received: list[bytes] = []
    async with upper_after_eof(received) as address:
        proxy = await start_proxy([address], mode="tcp", proxy={"proxy_protocol_from": ["127.0.0.1"]})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")  # no header: refused, nothing relayed
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        writer.close()
        assert await relay_with_header(proxy.port, b"ok") == b"OK"  # the next, valid one is served
    assert received == [b"ok"]


async def relay_with_header(port: int, payload: bytes) -> bytes:
    return await relay(port, proxy_header("v2", ("192.0.2.1", 1), ("192.0.2.2", 2)) + payload)


async def test_a_proxy_header_from_an_untrusted_peer_is_just_data(start_proxy: StartProxy) -> None:
    received: list[bytes] = []
    async with upper_after_eof(received) as address:
        proxy = await start_proxy([address], mode="tcp", proxy={"proxy_protocol_from": ["10.0.0.0/8"]})
        spoofed = proxy_header("v1", ("198.51.100.7", 40000), ("203.0.113.1", 443))
        await relay(proxy.port, spoofed + b"x")
    assert received == [spoofed + b"x"]  # not interpreted: relayed as the client sent it
