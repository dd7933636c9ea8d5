"""The PROXY protocol parser, the trusted-network check and the X-Forwarded-For rule, on byte fixtures."""

from __future__ import annotations

import struct
import time

import pytest

from services.proxy.proxy_protocol import (
    MAX_V2_PAYLOAD,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ClientAddress,
    ProxyProtocolError,
    TrustedNetworks,
    forwarded_client,
    parse_proxy_header,
)
from services.proxy.tcp import proxy_header
from shared.config import ConfigError, load_config

V1_TCP4 = b"PROXY TCP4 192.0.2.10 10.0.0.5 56324 8080\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 443\r\n"
# v2 as HAProxy's send-proxy-v2 writes it: PROXY command, TCP over IPv4, 12 bytes of addresses.
V2_TCP4 = (
    V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 10]) + bytes([10, 0, 0, 5]) + struct.pack("!HH", 56324, 8080)
)
V2_TCP6 = (
    V2_SIGNATURE
    + b"\x21\x21\x00\x24"
    + bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("20010db8000000000000000000000002")
    + struct.pack("!HH", 4242, 443)
)
V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"  # a health check from the sender itself
V2_UNSPEC = V2_SIGNATURE + b"\x21\x00\x00\x00"
TLVS = b"\x03\x00\x04\xde\xad\xbe\xef" + b"\x04\x00\x03abc"  # CRC32C and NOOP TLVs: skipped


def v2_with_tlvs(base: bytes, tlvs: bytes) -> bytes:
    length = struct.unpack_from("!H", base, 14)[0] + len(tlvs)
    return base[:14] + struct.pack("!H", length) + base[16:] + tlvs


# -- v1 ------------------------------------------------------------------------------------------


def test_v1_tcp4_and_the_data_after_it() -> None:
    assert parse_proxy_header(V1_TCP4 + b"GET / HTTP/1.1\r\n") == (
        ClientAddress("192.0.2.10", 56324, "10.0.0.5", 8080),
        len(V1_TCP4),
    )


def test_v1_tcp6() -> None:
    assert parse_proxy_header(V1_TCP6) == (ClientAddress("2001:db8::1", 4242, "2001:db8::2", 443), len(V1_TCP6))


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_v1_unknown_carries_no_address(header: bytes) -> None:
    assert parse_proxy_header(header + b"xyz") == (None, len(header))


@pytest.mark.parametrize("header", [V1_TCP4, V1_TCP6, b"PROXY UNKNOWN\r\n"])
def test_v1_every_strict_prefix_needs_more_bytes(header: bytes) -> None:
    for n in range(len(header)):
        assert parse_proxy_header(header[:n]) is None, header[:n]


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 192.0.2.10 10.0.0.5 56324\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.10  10.0.0.5 56324 8080\r\n",  # two spaces
        b"PROXY TCP4 2001:db8::1 10.0.0.5 56324 8080\r\n",  # family and address disagree
        b"PROXY TCP6 192.0.2.10 10.0.0.5 56324 8080\r\n",
        b"PROXY TCP4 192.0.2.010 10.0.0.5 56324 8080\r\n",  # leading zero in an octet
        b"PROXY TCP4 192.0.2.10 10.0.0.5 056324 8080\r\n",  # leading zero in a port
        b"PROXY TCP4 192.0.2.10 10.0.0.5 65536 8080\r\n",
        b"PROXY TCP4 192.0.2.10 10.0.0.5 -1 8080\r\n",
        b"PROXY UDP4 192.0.2.10 10.0.0.5 1 2\r\n",
        b"PROXY TCP4 h\xc3\xa9 10.0.0.5 1 2\r\n",  # not ASCII
        b"PROXY TCP4 192.0.2.10\n10.0.0.5 1 2\r\n",  # a bare LF inside
        b"proxy TCP4 192.0.2.10 10.0.0.5 1 2\r\n",  # the keyword is case-sensitive
        b"PROXYTCP4",
    ],
)
def test_v1_invalid(header: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(header)


def test_v1_longer_than_107_bytes_is_refused_without_waiting_for_more() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 200
    with pytest.raises(ProxyProtocolError, match="107"):
        parse_proxy_header(line[:V1_MAX_LENGTH])
    ok = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - len(b"PROXY UNKNOWN ") - 2) + b"\r\n"
    assert len(ok) == V1_MAX_LENGTH
    assert parse_proxy_header(ok) == (None, V1_MAX_LENGTH)


# -- v2 ------------------------------------------------------------------------------------------


def test_v2_tcp4_and_tcp6() -> None:
    assert parse_proxy_header(V2_TCP4 + b"data") == (ClientAddress("192.0.2.10", 56324, "10.0.0.5", 8080), 28)
    assert parse_proxy_header(V2_TCP6) == (ClientAddress("2001:db8::1", 4242, "2001:db8::2", 443), 52)


def test_v2_tlvs_are_skipped() -> None:
    header = v2_with_tlvs(V2_TCP4, TLVS)
    address, length = parse_proxy_header(header + b"GET") or (None, 0)
    assert address == ClientAddress("192.0.2.10", 56324, "10.0.0.5", 8080)
    assert length == len(header) == 28 + len(TLVS)


@pytest.mark.parametrize("header", [V2_LOCAL, V2_UNSPEC, v2_with_tlvs(V2_LOCAL, TLVS)])
def test_v2_local_and_unspec_carry_no_address(header: bytes) -> None:
    assert parse_proxy_header(header + b"x") == (None, len(header))


def test_v2_local_with_addresses_still_means_the_peer() -> None:
    local = V2_TCP4[:12] + b"\x20" + V2_TCP4[13:]
    assert parse_proxy_header(local) == (None, len(local))


def test_v2_unix_and_datagram_families_carry_no_usable_address() -> None:
    unix = V2_SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + bytes(216)
    udp4 = V2_TCP4[:13] + b"\x12" + V2_TCP4[14:]
    assert parse_proxy_header(unix) == (None, len(unix))
    assert parse_proxy_header(udp4) == (None, len(udp4))


@pytest.mark.parametrize("header", [V2_TCP4, V2_TCP6, v2_with_tlvs(V2_TCP6, TLVS), V2_LOCAL])
def test_v2_every_strict_prefix_needs_more_bytes(header: bytes) -> None:
    for n in range(len(header)):
        assert parse_proxy_header(header[:n]) is None, header[:n]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (V2_TCP4[:12] + b"\x11" + V2_TCP4[13:], "version 1"),
        (V2_TCP4[:12] + b"\x22" + V2_TCP4[13:], "command 2"),
        (V2_SIGNATURE[:5] + b"X", "no PROXY"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "needs 12"),  # addresses cut short
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "needs 36"),
    ],
)
def test_v2_invalid(header: bytes, problem: str) -> None:
    with pytest.raises(ProxyProtocolError, match=problem):
        parse_proxy_header(header)


def test_v2_payload_length_is_bounded_before_any_payload_arrives() -> None:
    head = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_PAYLOAD + 1)
    with pytest.raises(ProxyProtocolError, match="at most"):
        parse_proxy_header(head)  # refused from the 16 bytes alone: nothing is buffered waiting for 2 KiB+
    at_limit = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_PAYLOAD) + V2_TCP4[16:]
    assert parse_proxy_header(at_limit) is None  # allowed: waits for the rest
    whole = at_limit + bytes(MAX_V2_PAYLOAD - 12)
    assert parse_proxy_header(whole) == (ClientAddress("192.0.2.10", 56324, "10.0.0.5", 8080), len(whole))


# -- both --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"\x00", b"\r\n\r\nX"])
def test_not_a_header(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


def test_empty_needs_more() -> None:
    assert parse_proxy_header(b"") is None


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("src", "dst"),
    [(("198.51.100.7", 40000), ("10.1.2.3", 8080)), (("2001:db8::7", 1), ("2001:db8::8", 65535))],
)
def test_what_the_tcp_mode_sends_parses_back(version: str, src: tuple[str, int], dst: tuple[str, int]) -> None:
    header = proxy_header(version, src, dst)
    assert parse_proxy_header(header + b"payload") == (ClientAddress(src[0], src[1], dst[0], dst[1]), len(header))


def test_linear_in_the_input() -> None:
    """A huge buffer costs no more than a small one: only the bounded header is ever looked at."""
    huge = V1_TCP4 + b"x" * (32 << 20)
    small = V1_TCP4 + b"x"
    timings = []
    for buf in (small, huge):
        start = time.perf_counter()
        for _ in range(200):
            parse_proxy_header(buf)
        timings.append(time.perf_counter() - start)
    assert timings[1] < timings[0] * 20 + 0.05, timings
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"PROXY " + b"x" * (32 << 20))


# -- trusted networks and X-Forwarded-For ------------------------------------------------------------------


def test_trusted_networks() -> None:
    nets = TrustedNetworks(["10.0.0.0/8", "192.0.2.1", "fd00::/8"])
    assert "10.200.3.4" in nets and "192.0.2.1" in nets and "fd12::1" in nets
    assert "192.0.2.2" not in nets and "11.0.0.1" not in nets and "2001:db8::1" not in nets
    assert "::ffff:10.1.1.1" in nets  # an IPv4 client on a dual-stack listener
    assert "fe80::1%eth0" not in nets
    assert "unix" not in nets and "" not in nets and "not-an-ip" not in nets
    assert not TrustedNetworks() and "10.0.0.1" not in TrustedNetworks()
    assert TrustedNetworks(["0.0.0.0/0"])


TRUSTED = TrustedNetworks(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),  # an untrusted peer: its header is ignored
        ("10.0.0.2", [], "10.0.0.2"),  # trusted, no header
        ("10.0.0.2", ["1.2.3.4"], "1.2.3.4"),
        ("10.0.0.2", ["6.6.6.6, 1.2.3.4"], "1.2.3.4"),  # the client may lie on the left: rightmost untrusted
        ("10.0.0.2", ["1.2.3.4, 10.0.0.7"], "1.2.3.4"),  # trusted hops are skipped
        ("10.0.0.2", ["1.2.3.4", "10.0.0.7"], "1.2.3.4"),  # several headers read as one list
        ("10.0.0.2", ["10.0.0.9, 10.0.0.7"], "10.0.0.9"),  # only trusted hops: the leftmost
        ("10.0.0.2", ["1.2.3.4, garbage, 10.0.0.7"], "10.0.0.7"),  # the walk stops at a non-address
        ("10.0.0.2", ["2001:DB8::1"], "2001:db8::1"),
    ],
)
def test_forwarded_client(peer: str, xff: list[str], client: str) -> None:
    assert forwarded_client(peer, xff, TRUSTED) == client


def test_forwarded_client_with_nothing_trusted_is_the_peer() -> None:
    assert forwarded_client("10.0.0.2", ["1.2.3.4"], TrustedNetworks()) == "10.0.0.2"


# -- the settings ------------------------------------------------------------------------------------------


def test_settings_accept_networks_and_name_a_bad_one() -> None:
    config = load_config(
        None,
        environ={
            "GOBALANCER_PROXY_PROXY_PROTOCOL_FROM": '["172.16.0.0/12", "::1"]',
            "GOBALANCER_PROXY_TRUSTED_PROXIES": '["10.0.0.1"]',
        },
    )
    assert config.proxy.proxy_protocol_from == ["172.16.0.0/12", "::1"]
    assert config.proxy.trusted_proxies == ["10.0.0.1"]
    assert "172.20.0.3" in TrustedNetworks(config.proxy.proxy_protocol_from)
    defaults = load_config(None, environ={})
    assert defaults.proxy.proxy_protocol_from == [] and defaults.proxy.trusted_proxies == []
    with pytest.raises(ConfigError, match=r"trusted_proxies\[1\]: '10.0.0.0/33' is not a network"):
        load_config(None, environ={"GOBALANCER_PROXY_TRUSTED_PROXIES": '["127.0.0.1", "10.0.0.0/33"]'})
