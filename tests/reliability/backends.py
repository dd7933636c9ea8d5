"""Backends for fault scenarios.

* ``python -m tests.reliability.backends --listen H:P --name N``: an HTTP/1.1 backend that says who it
  is (``X-Backend``) and can hold a request (``GET /?delay=SECONDS``).
* :class:`CapturingBackend`: a raw asyncio server in the test process that records every byte it
  receives, per connection, and answers each request head it can find with a small 200. It proves
  what the proxy let through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shared.addresses import parse_address


def _query(target: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            target = rest.partition(" ")[0]
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if ":" in x)}
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            q = _query(target)
            if "delay" in q:
                await asyncio.sleep(float(q["delay"]))
            body = f'{{"backend": "{name}"}}\n'.encode()
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Backend: {name}\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
    except ConnectionError:
        return
    finally:
        writer.close()


async def serve(listen: str, name: str) -> None:
    hp = parse_address(listen)
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, name), hp.host, hp.port, limit=65536, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


@dataclass
class CapturingBackend:
    """Records every byte received; answers every complete request head with ``200`` (+ body if asked).

    Bodies are skipped by Content-Length or chunked framing as the *proxy* re-framed them: a request
    that reaches this backend must be unambiguous, so a framing it cannot follow is recorded as a
    protocol violation (``violations``).
    """

    received: list[bytearray] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    big_body: int = 2 * 1024 * 1024
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> CapturingBackend:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0, limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        self.received.append(buf)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                buf += head
                self.heads.append(bytes(head))
                lines = head.decode("latin-1").split("\r\n")
                fields = [x.partition(":") for x in lines[1:] if x]
                names = [k.lower() for k, _, _ in fields]
                values = {k.lower(): v.strip() for k, _, v in fields}
                if names.count("content-length") > 1 or names.count("transfer-encoding") > 1:
                    self.violations.append(f"duplicate framing header: {head!r}")
                if "content-length" in values and "transfer-encoding" in values:
                    self.violations.append(f"both CL and TE: {head!r}")
                if not lines[0].split(" ")[1:2] or not lines[0].split(" ")[1].startswith(("/", "*")):
                    self.violations.append(f"not origin-form: {lines[0]!r}")
                if "transfer-encoding" in values:
                    if values["transfer-encoding"].lower() != "chunked":
                        self.violations.append(f"odd Transfer-Encoding: {head!r}")
                    while True:
                        line = await reader.readuntil(b"\r\n")
                        buf += line
                        size = int(line[:-2], 16)  # the proxy re-frames: plain hex only
                        data = await reader.readexactly(size + 2)
                        buf += data
                        if size == 0:
                            break
                elif "content-length" in values:
                    buf += await reader.readexactly(int(values["content-length"]))
                target = lines[0].split(" ")[1] if " " in lines[0] else "/"
                body = b"x" * self.big_body if target.startswith("/big") else b"ok\n"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: capture\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except (ValueError, asyncio.LimitOverrunError) as exc:
            self.violations.append(f"unparseable: {exc!r}")
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="reliability test backend")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--name", default="slow")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


class ThreadedCapture:
    """A :class:`CapturingBackend` on its own event loop in a thread (usable from module fixtures)."""

    def __init__(self, backend: Any = None) -> None:
        import threading

        self.backend = backend if backend is not None else CapturingBackend()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="capture", daemon=True)

    def start(self) -> Any:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.backend.start(), self.loop).result(10)
        return self.backend

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.backend.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# A complete second response hidden after the first one's body: if the proxy pooled this connection,
# the next client would get it (response queue poisoning).
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Smuggled: yes\r\n\r\nSMUGGLED"

HOSTILE_RESPONSES: dict[str, bytes] = {
    "/dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "/bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "/neg-cl": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    "/obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "/nul": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "/extra": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED,
    "/extra-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + SMUGGLED,
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "/lf-only": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    # second corpus (issue 15)
    "/continue-flood": b"HTTP/1.1 100 Continue\r\n\r\n" * 3000 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/unasked-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n" + SMUGGLED,
    "/cl-repeated": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    "/cl-twice-same": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "/head-spaces-ctl": b"HTTP/1.1 200 OK\r\nX: " + b" " * 60000 + b"\x01\r\nContent-Length: 2\r\n\r\nok",
    "/no-content": b"HTTP/1.1 204 No Content\r\nConnection: x\r\nX: y\r\n\r\n",
}


@dataclass
class HostileBackend:
    """Answers each request with ``HOSTILE_RESPONSES[path]`` (a plain 200 for other paths), keeping
    the connection open: whatever the proxy does with the leftovers is visible to the next client."""

    heads: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> HostileBackend:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                target = head.split(b" ", 2)[1].decode("latin-1")
                default = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                writer.write(HOSTILE_RESPONSES.get(target, default))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
