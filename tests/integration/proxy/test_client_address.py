"""Who the client is behind a balancer: the PROXY protocol on the HTTP listener, and X-Forwarded-For
believed only from trusted proxies (uvicorn's ``forwarded_allow_ips``)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Collection

import pytest

from services.proxy.balancer import StaticRoundRobin, Upstream
from tests.integration.proxy.backends import Backend, Backends, Request, exchange_raw, read_response
from tests.integration.proxy.conftest import StartProxy

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src: str, src_port: int, dst: str, dst_port: int) -> bytes:
    body = bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + struct.pack("!HH", src_port, dst_port)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


async def _get(port: int, raw: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return (await asyncio.wait_for(read_response(reader), 5)).status
    finally:
        writer.close()


@pytest.mark.parametrize(
    "header",
    [b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n", v2_header("203.0.113.7", 40000, "10.0.0.1", 80)],
    ids=["v1", "v2"],
)
async def test_a_proxy_header_from_a_trusted_balancer_names_the_client(
    backends: Backends, start_proxy: StartProxy, header: bytes
) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], proxy={"proxy_protocol_from": ["127.0.0.0/8"]})
    # Two keep-alive requests: the address holds for the whole connection; the header may come with them.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(header + b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    writer.write(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    writer.close()
    assert isinstance(b, Backend)
    assert [r.header("X-Forwarded-For") for r in b.requests] == ["203.0.113.7", "203.0.113.7"]


async def test_a_trusted_balancer_must_send_the_header(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], proxy={"proxy_protocol_from": ["127.0.0.1/32"]})
    answer = await exchange_raw(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert answer == b""  # closed: nothing forwarded
    assert isinstance(b, Backend) and not b.requests


async def test_a_proxy_header_from_anyone_else_is_a_bad_request(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], proxy={"proxy_protocol_from": ["10.9.9.0/24"]})
    answer = await exchange_raw(
        proxy.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert isinstance(b, Backend) and not b.requests


async def test_x_forwarded_for_from_an_untrusted_peer_is_dropped(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b])
    assert await _get(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n") == 200
    assert isinstance(b, Backend)
    seen: Request = b.requests[-1]
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]


class KeyRecorder(StaticRoundRobin):
    def __init__(self, upstreams: list[Upstream]) -> None:
        super().__init__(upstreams)
        self.keys: list[str] = []

    def pick(self, key: str, exclude: Collection[str] = ()) -> Upstream | None:
        self.keys.append(key)
        return super().pick(key, exclude)


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(
    backends: Backends, start_proxy: StartProxy
) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b], proxy={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]})
    recorder = KeyRecorder([Upstream.from_address(b.address)])
    proxy.context.balancer = recorder
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.9, 10.1.2.3\r\n\r\n"
    assert await _get(proxy.port, raw) == 200
    assert isinstance(b, Backend)
    assert b.requests[-1].header("X-Forwarded-For") == "198.51.100.9, 10.1.2.3, 127.0.0.1"  # the chain grows
    assert recorder.keys == ["198.51.100.9"]  # the first untrusted hop from the right is the client
