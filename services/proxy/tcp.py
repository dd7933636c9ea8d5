"""TCP mode: a byte relay with half-close, backpressure both ways and optional PROXY protocol headers.

A connection from a peer in ``proxy.proxy_protocol_from`` must start with a PROXY header (v1 or v2): its
source address is then the client's (the balancing key and the header sent on, if any); nothing is
relayed before it, and a connection whose first bytes are not a valid header is closed.

Bytes from the client queue until an upstream is connected (tried on other backends on connect
failure; reading the client pauses if the queue passes the high-water mark); then bytes flow both
ways. EOF on one side becomes ``write_eof`` on the other; the relay ends when both directions are
done or either side closes. Each side's ``pause_writing`` pauses reading on the other side.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import time
from typing import cast

from services.proxy.attempts import Attempts
from services.proxy.balancer import Upstream
from services.proxy.context import NEVER, Context
from services.proxy.flow import PEER_FULL, QUEUED, ReadPauses
from services.proxy.proxy_protocol import ProxyProtocolError, TrustedNetworks, parse_proxy_header
from services.proxy.stats import TCP_RELAYED
from shared.logs import get_logger

log = get_logger("proxy.tcp")

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_header(version: str, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """The PROXY protocol header (v1 text or v2 binary) for a TCP connection from ``src`` to ``dst``."""
    src_ip = ipaddress.ip_address(src[0])
    dst_ip = ipaddress.ip_address(dst[0])
    if src_ip.version != dst_ip.version:  # e.g. an IPv4 client on a dual-stack listener
        if isinstance(src_ip, ipaddress.IPv4Address):
            src_ip = ipaddress.IPv6Address(f"::ffff:{src_ip}")
        elif isinstance(dst_ip, ipaddress.IPv4Address):
            dst_ip = ipaddress.IPv6Address(f"::ffff:{dst_ip}")
    v6 = src_ip.version == 6
    if version == "v1":
        family = "TCP6" if v6 else "TCP4"
        return f"PROXY {family} {src_ip} {dst_ip} {src[1]} {dst[1]}\r\n".encode()
    body = src_ip.packed + dst_ip.packed + struct.pack("!HH", src[1], dst[1])
    family_byte = 0x21 if v6 else 0x11  # AF_INET6/AF_INET, STREAM
    return PROXY_V2_SIGNATURE + bytes([0x21, family_byte]) + struct.pack("!H", len(body)) + body


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, client: TcpClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=self.client.ctx.high_water)

    def data_received(self, data: bytes) -> None:
        self.client.from_upstream(data)

    def eof_received(self) -> bool:
        self.client.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost()

    def pause_writing(self) -> None:
        self.client.pauses.pause(PEER_FULL)

    def resume_writing(self) -> None:
        self.client.pauses.resume(PEER_FULL)


class TcpClient(asyncio.Protocol):
    """One relayed connection. Its attempts (pick, connect, retry on another backend) are the HTTP
    path's (``services/proxy/attempts.py``), and so is its flow control (``services/proxy/flow.py``).
    Its idle timeout is a deadline checked by the Context's sweep, moved lazily: bytes in either
    direction only note the time."""

    def __init__(self, ctx: Context, proxy_protocol_from: TrustedNetworks | None = None) -> None:
        self.ctx = ctx
        self.proxy_protocol_from = proxy_protocol_from
        self.peer: tuple[str, int] | None = None  # the client (from the PROXY header when one came)
        self.local: tuple[str, int] | None = None  # the address it connected to
        self._header: bytearray | None = None  # awaiting a PROXY header: the bytes so far
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.pauses = cast(ReadPauses, None)
        self.attempts = Attempts(ctx)
        self.up: _UpstreamSide | None = None
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.closed = False
        self.client_eof = False
        self.upstream_eof_seen = False
        self.latency: float | None = None
        self.started_at = 0.0
        self.bytes_in = 0  # client -> backend
        self.bytes_out = 0  # backend -> client
        self._last = 0.0
        self.deadline = NEVER
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        self.pauses = ReadPauses(transport)
        ctx = self.ctx
        transport.set_write_buffer_limits(high=ctx.high_water)
        ctx.connections.add(self)
        ctx.stats.connections += 1
        self._last = ctx.now
        self.deadline = ctx.now + ctx.client_idle
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.peer = peer[:2] if isinstance(peer, tuple) else None
        self.local = sock[:2] if isinstance(sock, tuple) else None
        if self.proxy_protocol_from and self.peer is not None and self.peer[0] in self.proxy_protocol_from:
            self._header = bytearray()  # connect once the header has said who the client is
        else:
            self._task = ctx.loop.create_task(self._connect())

    def _header_received(self, data: bytes) -> None:
        assert self._header is not None
        self._header += data
        try:
            parsed = parse_proxy_header(self._header)
        except ProxyProtocolError as exc:
            log.debug("bad PROXY header", peer=self.peer, error=str(exc))
            self._header = None
            self._close()
            return
        if parsed is None:
            return  # bounded: the parser refuses a header longer than the protocol allows
        address, length = parsed
        rest = bytes(self._header[length:])
        self._header = None
        if address is not None:
            self.peer, self.local = (address.ip, address.port), (address.dst_ip, address.dst_port)
        self._task = self.ctx.loop.create_task(self._connect())
        if rest:
            self.data_received(rest)

    async def _connect(self) -> None:
        ctx = self.ctx
        peer, sock = self.peer, self.local
        key = peer[0] if peer is not None else ""
        attempts = self.attempts
        upstream = attempts.first(key)
        while upstream is not None:
            if upstream.port < 0:  # a pool at its connection limits: queued or refused (limits/pools.py)
                got = await attempts.admitted(upstream)
                if isinstance(got, str):
                    ctx.stats.error(503)
                    self._close()
                    return
                upstream = got
            start = time.perf_counter()  # loop.time() is in whole ms under uvloop
            proto = await attempts.connect(upstream, lambda: _UpstreamSide(self))
            if proto is None:
                upstream = attempts.next(key, upstream.address)
                continue
            assert isinstance(proto, _UpstreamSide) and proto.transport is not None
            self.upstream = upstream
            self.started_at = start
            self.latency = time.perf_counter() - start
            if self.closed:
                proto.transport.close()
                self._finish()
                return
            self.up = proto
            version = ctx.config.proxy.proxy_protocol
            if version and peer is not None and sock is not None:
                proto.transport.write(proxy_header(version, peer, sock))
            if self.pending:
                proto.transport.writelines(self.pending)
                self.pending = []
                self.pending_size = 0
            if proto.transport.get_write_buffer_size() <= ctx.high_water:
                self.pauses.resume(QUEUED)
            if self.client_eof and proto.transport.can_write_eof():
                proto.transport.write_eof()
            return
        ctx.stats.error(502 if attempts.tried or attempts.last else 503)
        self._close()

    def data_received(self, data: bytes) -> None:
        self._last = self.ctx.now
        if self._header is not None:
            self._header_received(data)
            return
        self.bytes_in += len(data)
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.write(data)
        else:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > self.ctx.high_water:
                self.pauses.pause(QUEUED)

    def eof_received(self) -> bool:
        self.client_eof = True
        if self._header is not None:  # ended before its PROXY header was complete
            self._close()
            return True
        up = self.up
        if up is not None and up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()
        if self.upstream_eof_seen:
            self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pauses.closed = True
        self.ctx.forget(self)
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()
        if self.up is None and self._task is not None:
            self._task.cancel()
        self._finish()

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    # -- from the upstream side ----------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        self._last = self.ctx.now
        self.bytes_out += len(data)
        if not self.closed:
            self.transport.write(data)

    def upstream_eof(self) -> None:
        self.upstream_eof_seen = True
        if not self.closed:
            if self.client_eof or not self.transport.can_write_eof():
                self._close()
            else:
                self.transport.write_eof()

    def upstream_lost(self) -> None:
        self._close()
        self._finish()

    # -- lifecycle -----------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            ctx = self.ctx
            self.attempts.finish(True, self.latency)
            if ctx.metrics_on:  # a relayed connection: class "tcp" ("error" is left to failed connects)
                b = ctx.stats.backend(upstream.address)
                b.classes[TCP_RELAYED] += 1
                b.duration.observe(time.perf_counter() - self.started_at)
                if self.latency is not None:
                    b.ttfb.observe(self.latency)
                b.request_bytes += self.bytes_in
                b.response_bytes += self.bytes_out

    def on_deadline(self, now: float) -> None:
        if self.closed:
            self.deadline = NEVER
            return
        idle_until = self._last + self.ctx.client_idle
        if now >= idle_until:
            self._close()
        else:
            self.deadline = idle_until

    def drain(self, grace: float) -> None:
        """TCP connections are not interrupted by a drain; they end on their own or at the deadline."""

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pauses.closed = True
        self.deadline = NEVER
        self.transport.close()
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()

    def abort(self) -> None:
        self._close()
        self.transport.abort()
        if self.up is not None and self.up.transport is not None:
            self.up.transport.abort()
