"""Upgrade (WebSocket) tunnel and TLS termination."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import eventually
from tests.integration.proxy.backends import Backend, Backends, read_response, serving
from tests.integration.proxy.conftest import StartProxy


@contextlib.asynccontextmanager
async def websocket_echo() -> AsyncIterator[str]:
    """Answers an Upgrade with 101, then echoes raw bytes (the frames are opaque to the proxy)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"upgrade: websocket" in head.lower() and b"connection: upgrade" in head.lower()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(b"bye")  # after the client's half-close
        writer.close()

    async with serving(serve) as address:
        yield address


async def test_websocket_echo_through_tunnel(start_proxy: StartProxy) -> None:
    async with websocket_echo() as address:
        proxy = await start_proxy([address])
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Upgrade: websocket" in head and b"Connection: upgrade" in head
        frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # masked "Hello"
        for _ in range(3):
            writer.write(frame)
            assert await asyncio.wait_for(reader.readexactly(len(frame)), 5) == frame
        big = bytes(range(256)) * 4096  # 1 MiB both ways through the tunnel
        writer.write(big)
        assert await asyncio.wait_for(reader.readexactly(len(big)), 10) == big
        writer.write_eof()  # half-close travels through; the backend still answers
        assert await asyncio.wait_for(reader.read(), 5) == b"bye"
        writer.close()
        assert proxy.context.stats.tunnels == 1
        await eventually(lambda: not proxy.context.connections, message="tunnel closed on both sides")


def self_signed(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


async def test_tls_termination(tmp_path: Path, backends: Backends, start_proxy: StartProxy) -> None:
    cert, key = self_signed(tmp_path)
    b = await backends.add(Backend())
    proxy = await start_proxy([b], proxy={"tls": {"cert_file": cert, "key_file": key}})
    ctx = ssl.create_default_context(cafile=cert)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=ctx, server_hostname="127.0.0.1")
    for i in range(2):  # keep-alive over TLS
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab%d" % i)
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.status == 200 and resp.body == b"ab%d" % i
    writer.close()
    assert isinstance(b, Backend)
    assert b.requests[-1].header("X-Forwarded-Proto") == "https"


async def test_plain_http_to_tls_listener_fails(tmp_path: Path, backends: Backends, start_proxy: StartProxy) -> None:
    cert, key = self_signed(tmp_path)
    b = await backends.add(Backend())
    proxy = await start_proxy([b], proxy={"tls": {"cert_file": cert, "key_file": key}})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert isinstance(b, Backend) and b.requests == []
