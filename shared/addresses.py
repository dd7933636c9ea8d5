"""Parsing and validation of ``host:port`` addresses.

Accepted hosts: a DNS name, an IPv4 address, or an IPv6 address in brackets. An empty host
(``:8080``) means "all interfaces" and is only accepted where a listener is described.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
# An IPv6 zone identifier (``fe80::1%eth0``): RFC 6874 allows only "unreserved" characters in it
# (letters, digits, ``-._~``). Interface names and numeric scope ids fit; nothing printed from a
# stored address (CLI, logs) can then carry markup, newlines or terminal escapes.
_ZONE = re.compile(r"[A-Za-z0-9._~-]{1,64}")


class HostPort(NamedTuple):
    host: str  # without brackets; "" for all interfaces
    port: int

    def __str__(self) -> str:
        return format_address(self.host, self.port)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def format_address(host: str, port: int) -> str:
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _valid_dns_name(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = (host[:-1] if host.endswith(".") else host).split(".")  # one trailing dot: the root
    return all(_LABEL.match(label) for label in labels)


def parse_address(value: str, *, allow_empty_host: bool = False) -> HostPort:
    """Parse ``host:port``; raise ValueError with a readable reason."""
    if not isinstance(value, str) or not value:
        raise ValueError("address must be a non-empty string host:port")
    if value != value.strip():
        raise ValueError(f"address {value!r} has surrounding whitespace")
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise ValueError(f"address {value!r} must be [IPv6]:port")
        host, port_text = value[1:end], value[end + 2 :]
        if "%" in host:
            zone = host.partition("%")[2]
            if not _ZONE.fullmatch(zone):
                raise ValueError(
                    f"address {value!r} has an invalid IPv6 zone id: 1-64 letters, digits or '-._~' (RFC 6874)"
                )
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"address {value!r} has an invalid IPv6 host") from None
        host = str(ip) if "%" not in host else host
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"address {value!r} must be host:port")
        if ":" in host:
            raise ValueError(f"address {value!r}: an IPv6 host must be written in brackets, [::1]:port")
        if host == "":
            if not allow_empty_host:
                raise ValueError(f"address {value!r} has no host")
        elif re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"address {value!r} has an invalid IPv4 host") from None
        elif not _valid_dns_name(host):
            raise ValueError(f"address {value!r} has an invalid host name")
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"address {value!r} has an invalid port (must be 1-65535)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"address {value!r} has port {port} out of range 1-65535")
    return HostPort(host, port)


def with_port_offset(address: str, offset: int) -> str:
    """``127.0.0.1:9100`` + 2 -> ``127.0.0.1:9102`` (proxy worker i serves on port + i)."""
    hp = parse_address(address, allow_empty_host=True)
    return format_address(hp.host, hp.port + offset)


def normalize_address(value: str) -> str:
    """The canonical spelling used as a backend's key in the store."""
    hp = parse_address(value)
    host = hp.host
    if "%" in host:  # an IPv6 zone names an interface: its case matters
        address, _, zone = host.partition("%")
        host = f"{address.lower()}%{zone}"
    else:
        host = host.lower().removesuffix(".")  # "a.example." and "a.example" are one backend
    return format_address(host, hp.port)
