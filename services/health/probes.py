"""Probes on raw asyncio transports: a TCP connect, or one HTTP/1.1 request over TCP or TLS.

Kept cheap on purpose (1,000 backends every 2 s on one replica): no stream objects, one small
Protocol per HTTP probe, the request bytes built once per backend, the response judged incrementally
and abandoned as soon as the verdict is known. Every probe is bounded by ``timeout_sec`` as a whole
(connect + TLS + response). Connections are closed with a reset (SO_LINGER 0), as HAProxy does for
its checks, so thousands of probes a minute leave no TIME_WAIT sockets behind on the prober.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import ssl
import struct
from dataclasses import dataclass

from services.health.http_check import ResponseCheck, build_request
from services.health.state import Verdict
from shared.addresses import parse_address
from shared.config import ProbeConfig, parse_status_ranges

_LINGER_RESET = struct.pack("ii", 1, 0)
CONNECTED = Verdict(True, "connected")


def _ip_family(host: str) -> int:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return 0
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """What a probe of one backend needs, computed once when the backend appears."""

    address: str
    host: str
    port: int
    request: bytes = b""
    server_hostname: str | None = None
    family: int = 0  # AF_INET/AF_INET6 when ``host`` is an IP literal (a TCP probe then skips the resolver)


def _reset_close(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def _sni(host_header: str) -> str:
    """The host name part of a configured Host header (``name``, ``name:port``, ``[v6]:port``)."""
    if not host_header:
        return ""
    try:
        return parse_address(host_header).host
    except ValueError:
        return host_header.strip("[]")


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    return f"connect failed: {exc.strerror or exc}"


class _HttpProbe(asyncio.Protocol):
    """Write the request on connect, feed the answer to a ResponseCheck, resolve at the verdict."""

    def __init__(self, request: bytes, check: ResponseCheck, done: asyncio.Future[Verdict]) -> None:
        self.request = request
        self.check = check
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        verdict = self.check.feed(data)
        if verdict is not None:
            self._finish(verdict)

    def eof_received(self) -> bool:
        self._finish(self.check.eof())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None or self.check.verdict is not None:
            self._finish(self.check.eof())
        elif isinstance(exc, OSError):
            self._finish(Verdict(False, _describe_os_error(exc)))
        else:
            self._finish(Verdict(False, f"connection lost: {exc}"))

    def _finish(self, verdict: Verdict) -> None:
        if not self.done.done():
            self.done.set_result(verdict)


class Prober:
    """Runs one probe of the configured type against a :class:`ProbeTarget`; never raises."""

    def __init__(self, config: ProbeConfig) -> None:
        self.type = config.type
        self.timeout = float(config.timeout_sec)
        self.method = config.method
        self.path = config.path
        self.host = config.host
        self.ranges = parse_status_ranges(config.expect_status)
        self.expect_body = config.expect_body.encode("utf-8")
        self.ssl: ssl.SSLContext | None = None
        if config.type == "https":
            ctx = ssl.create_default_context()
            if not config.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.ssl = ctx

    def target(self, address: str) -> ProbeTarget:
        """Parse ``address`` (ValueError when malformed) and prepare its request."""
        hp = parse_address(address)
        if self.type == "tcp":
            return ProbeTarget(address, hp.host, hp.port, family=_ip_family(hp.host))
        host_header = self.host or address
        server_hostname: str | None = None
        if self.ssl is not None:
            # SNI: the configured Host (without a port) if any, else the backend's own host name.
            server_hostname = _sni(self.host) or hp.host
        return ProbeTarget(
            address, hp.host, hp.port, build_request(self.method, self.path, host_header), server_hostname
        )

    async def probe(self, target: ProbeTarget) -> Verdict:
        try:
            async with asyncio.timeout(self.timeout):
                if self.type == "tcp":
                    return await self._tcp(target)
                return await self._http(target)
        except TimeoutError:
            return Verdict(False, f"timeout after {self.timeout:g}s")
        except ssl.SSLError as exc:
            return Verdict(False, f"TLS: {exc.reason or exc}")
        except OSError as exc:
            return Verdict(False, _describe_os_error(exc))

    async def _tcp(self, target: ProbeTarget) -> Verdict:
        loop = asyncio.get_running_loop()
        if not target.family:  # a host name: let the loop resolve it (and try each address)
            transport, _ = await loop.create_connection(asyncio.Protocol, target.host, target.port)
            _reset_close(transport)
            return CONNECTED
        # An IP literal: a bare non-blocking connect, no transport or protocol objects at all.
        sock = socket.socket(target.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (target.host, target.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        finally:
            sock.close()
        return CONNECTED

    async def _http(self, target: ProbeTarget) -> Verdict:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Verdict] = loop.create_future()
        check = ResponseCheck(self.ranges, self.expect_body, head=self.method == "HEAD")
        transport, _ = await loop.create_connection(
            lambda: _HttpProbe(target.request, check, done),
            target.host,
            target.port,
            ssl=self.ssl,
            server_hostname=target.server_hostname if self.ssl is not None else None,
        )
        try:
            return await done
        finally:
            _reset_close(transport)
