"""Who the client is when a balancer stands in front: the PROXY protocol (v1, v2) and X-Forwarded-For.

Pure code, no I/O. A listener accepts a PROXY header only from peers in ``proxy.proxy_protocol_from``
(and then requires it), and trusts an incoming ``X-Forwarded-For`` only from peers in
``proxy.trusted_proxies`` (uvicorn's ``forwarded_allow_ips``). Everything here is linear in its input
and bounded: a v1 header is at most 107 bytes, a v2 header at most ``16 + MAX_V2_PAYLOAD``.

Spec: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import NamedTuple

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the whole line, CRLF included (spec section 2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16  # signature, version/command, family/transport, payload length
# Addresses plus TLVs. The spec allows 65535; a front sends addresses and a few small TLVs, so a larger
# payload is refused rather than buffered.
MAX_V2_PAYLOAD = 2048

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_V2_ADDRESS_LENGTH = {_V2_TCP4: 12, _V2_TCP6: 36}


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header (the connection must be closed)."""


class ClientAddress(NamedTuple):
    """The original connection as the sender of the header saw it."""

    ip: str
    port: int
    dst_ip: str
    dst_port: int


def parse_proxy_header(buf: bytes | bytearray | memoryview) -> tuple[ClientAddress | None, int] | None:
    """Parse the PROXY header at the start of ``buf``.

    Returns ``None`` when more bytes are needed, else ``(address, length)``: ``length`` bytes of ``buf``
    are the header (the application's data starts after them); ``address`` is ``None`` when the header
    carries none to use (v1 ``UNKNOWN``, v2 ``LOCAL``, v2 with an unspecified or non-IP family): keep the
    connection's own peer then. Raises :class:`ProxyProtocolError` when ``buf`` cannot start a valid header.
    """
    data = bytes(buf[:V1_MAX_LENGTH]) if len(buf) > V1_MAX_LENGTH else bytes(buf)
    if not data:
        return None
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(buf)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ClientAddress | None, int] | None:
    if len(data) < len(V1_PREFIX):
        if V1_PREFIX.startswith(data):
            return None
        raise ProxyProtocolError("no PROXY protocol header")
    if not data.startswith(V1_PREFIX):
        raise ProxyProtocolError("no PROXY protocol header")
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX_LENGTH} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("v1 header: stray CR or LF")
        return None
    length = end + 2
    line = data[len(V1_PREFIX) : end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header: not ASCII") from None
    fields = text.split(" ")
    if fields[0] == "UNKNOWN":
        return None, length
    if len(fields) != 5 or fields[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 header: expected 'TCP4|TCP6 SRC DST SPORT DPORT' or 'UNKNOWN', got {text!r}")
    family, src, dst, sport, dport = fields
    version = 4 if family == "TCP4" else 6
    return ClientAddress(_v1_ip(src, version), _v1_port(sport), _v1_ip(dst, version), _v1_port(dport)), length


def _v1_ip(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 header: bad address {text!r}") from None
    if ip.version != version:
        raise ProxyProtocolError(f"v1 header: {text!r} is not an IPv{version} address")
    return str(ip)


def _v1_port(text: str) -> int:
    # Decimal, no sign, no leading zero (spec 2.1), at most 65535.
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"v1 header: bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"v1 header: bad port {text!r}")
    return port


def _parse_v2(buf: bytes | bytearray | memoryview) -> tuple[ClientAddress | None, int] | None:
    head = bytes(buf[:V2_HEADER_LENGTH])
    sig = head[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(sig):
        raise ProxyProtocolError("no PROXY protocol header")
    if len(head) < V2_HEADER_LENGTH:
        return None
    version_command, family, payload_length = head[12], head[13], struct.unpack_from("!H", head, 14)[0]
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"v2 header: version {version_command >> 4}, expected 2")
    command = version_command & 0x0F
    if command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
        raise ProxyProtocolError(f"v2 header: unknown command {command}")
    if payload_length > MAX_V2_PAYLOAD:
        raise ProxyProtocolError(f"v2 header: payload of {payload_length} bytes (at most {MAX_V2_PAYLOAD})")
    length = V2_HEADER_LENGTH + payload_length
    if len(buf) < length:
        return None
    if command == _V2_COMMAND_LOCAL:
        return None, length  # a health check or the sender's own connection: the peer is the client
    needed = _V2_ADDRESS_LENGTH.get(family)
    if needed is None:
        # AF_UNSPEC, AF_UNIX or a datagram transport: nothing usable as a TCP client's address.
        return None, length
    if payload_length < needed:
        raise ProxyProtocolError(f"v2 header: {payload_length} bytes of payload, the family needs {needed}")
    payload = bytes(buf[V2_HEADER_LENGTH : V2_HEADER_LENGTH + needed])  # TLVs after the addresses: skipped
    if family == _V2_TCP4:
        src: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(payload[0:4])
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(payload[4:8])
        sport, dport = struct.unpack_from("!HH", payload, 8)
    else:
        src, dst = ipaddress.IPv6Address(payload[0:16]), ipaddress.IPv6Address(payload[16:32])
        sport, dport = struct.unpack_from("!HH", payload, 32)
    return ClientAddress(str(src), sport, str(dst), dport), length


class TrustedNetworks:
    """A set of networks (CIDRs or single addresses); ``ip in networks`` for a peer's address.

    An IPv4-mapped IPv6 peer (``::ffff:10.0.0.1`` on a dual-stack listener) matches the IPv4 networks.
    Anything that is not an IP address (a Unix socket peer) is not trusted. Empty: nothing is trusted.
    """

    __slots__ = ("_networks",)

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, ip: object) -> bool:
        if not self._networks or not isinstance(ip, str):
            return False
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])  # a link-local peer may carry a zone
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def forwarded_client(peer: str, x_forwarded_for: Iterable[str], trusted: TrustedNetworks) -> str:
    """The client's address given the connection's ``peer`` and the values of its ``X-Forwarded-For``
    headers (in order), trusting only the hops in ``trusted`` (uvicorn's ``forwarded_allow_ips`` rule).

    A peer that is not trusted is the client, whatever the header says. Otherwise the header is read from
    the right (the hop nearest to us), skipping trusted hops: the first untrusted address is the client.
    An entry that is not an IP address stops the walk (the hop before it, which is trusted, is the client);
    a header made only of trusted hops gives its leftmost one.
    """
    if peer not in trusted:
        return peer
    hops = [hop.strip() for value in x_forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            hop = str(ipaddress.ip_address(hop))
        except ValueError:
            return client
        client = hop
        if hop not in trusted:
            return hop
    return client
