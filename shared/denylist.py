"""Addresses no backend may have: the suite's own listeners and the networks of ``backend_deny``.

A backend that is the admin API, a metrics endpoint, Redis or the proxy itself lets a client of the
proxy reach them through the data plane (add backends through the admin API, write keys into
Redis). :meth:`BackendDenyList.reason` says why an address is refused, naming the setting, or None.
Pure: no I/O (names are compared as written; ``localhost`` and ``*.localhost`` count as loopback;
other DNS names are not resolved here).

The store checks it on every write that may create a backend (``Store.create_backend`` and
``Store.upsert_backend``), so the admin API and every discovery source go through it alike. Besides
the config's listeners, the store passes those the live replicas registered (:func:`replica_listeners`:
their ``listen`` and ``metrics`` addresses), which covers replicas started with other ports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.addresses import parse_address
from shared.config import Config
from shared.models import ReplicaInfo

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOOPBACK: tuple[IP, ...] = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


@dataclass(frozen=True, slots=True)
class Listener:
    setting: str  # the config field that names it, e.g. "admin.listen_address"
    host: str  # as configured, lower case, without brackets; "" = all interfaces
    port: int


def _ip(host: str) -> IP | None:
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def _redis_listeners(url: str) -> list[Listener]:
    """Where the configured Redis (or its sentinels) listens; nothing for unix sockets."""
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        from shared.store.connect import parse_sentinel_url

        try:
            sentinels, _, _ = parse_sentinel_url(url)
        except ValueError:
            return []
        return [Listener("redis.url", host.lower(), port) for host, port in sentinels]
    if not url.startswith(("redis://", "rediss://")):
        return []
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 6379
    except ValueError:
        return []
    return [Listener("redis.url", host.lower(), port)] if host else []


def replica_listeners(replicas: Iterable[ReplicaInfo]) -> list[Listener]:
    """Where live replicas listen, as they registered it (unparsable entries are skipped)."""
    out: list[Listener] = []
    for replica in replicas:
        for what, address in (("listen", replica.listen), ("metrics", replica.metrics)):
            if not address:
                continue
            try:
                hp = parse_address(address, allow_empty_host=True)
            except ValueError:
                continue
            out.append(Listener(f"{replica.service} replica {replica.id}'s {what} address", hp.host.lower(), hp.port))
    return out


class BackendDenyList:
    def __init__(self, listeners: list[Listener], networks: list[tuple[str, Network]]) -> None:
        self.listeners = listeners
        self.networks = networks

    @classmethod
    def from_config(cls, config: Config) -> BackendDenyList:
        listeners: list[Listener] = []
        if config.backend_deny.own_listeners:

            def add(setting: str, address: str, ports: int = 1) -> None:
                if address:
                    hp = parse_address(address, allow_empty_host=True)
                    for i in range(ports):
                        listeners.append(Listener(setting, hp.host.lower(), hp.port + i))

            add("admin.listen_address", config.admin.listen_address)
            add("listen_address", config.listen_address)
            add("metrics.proxy_listen_address", config.metrics.proxy_listen_address, config.proxy.workers)
            add("metrics.health_listen_address", config.metrics.health_listen_address)
            add("metrics.discovery_listen_address", config.metrics.discovery_listen_address)
            listeners += _redis_listeners(config.redis.url)
        networks = [
            (f"backend_deny.networks[{i}]", ipaddress.ip_network(n, strict=False))
            for i, n in enumerate(config.backend_deny.networks)
        ]
        return cls(listeners, networks)

    @property
    def own_listeners(self) -> bool:
        return bool(self.listeners)

    def reason(self, address: str, live: Sequence[Listener] = ()) -> str | None:
        """Why ``address`` may not be a backend (a sentence naming the setting), or None. ``live``:
        listeners of running replicas (see :func:`replica_listeners`), checked like the config's."""
        hp = parse_address(address)
        host = hp.host.lower()
        ip = _ip(host)
        local = _is_localhost(host)
        ips: tuple[IP, ...] = _LOOPBACK if local else (ip,) if ip is not None else ()
        for listener in (*self.listeners, *live) if self.listeners else ():
            if listener.port != hp.port or not self._same_host(listener, host, ips):
                continue
            return (
                f"{address} is this suite's own {listener.setting} "
                "(a client of the proxy would reach it through the data plane); refused by backend_deny.own_listeners"
            )
        for setting, network in self.networks:
            if any(i.version == network.version and i in network for i in ips):
                return f"{address} is in {network}, refused by {setting}"
        return None

    @staticmethod
    def _same_host(listener: Listener, host: str, ips: tuple[IP, ...]) -> bool:
        target = _ip(listener.host)
        if listener.host == "" or (target is not None and target.is_unspecified):
            # All interfaces: this machine's loopback and "any" addresses reach it.
            return any(i.is_loopback or i.is_unspecified for i in ips)
        if target is None:  # a name: the same name, or localhost for localhost
            if _is_localhost(listener.host):
                return any(i.is_loopback for i in ips)
            return listener.host.rstrip(".") == host.rstrip(".")
        if target.is_loopback and (_is_localhost(host) or any(i.is_unspecified for i in ips)):
            return True  # (a connect to 0.0.0.0 or :: reaches this machine's loopback)
        return target in ips
