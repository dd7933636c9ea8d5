"""The rules of pools and routes: names, host patterns, path prefixes, conditions, and the table's checks.

Pure functions over already-decoded values, shared by the config schema (``shared.config.schema``), the
route matcher (``services.proxy.routes``) and the admin API (a new route table is checked the same way
before it replaces the running one).

Precedence (the matcher's, and :func:`precedence`'s): a route with an exact host comes before one with a
wildcard host (``*.example.com``; the longest suffix first), which comes before a host-less route; among
the routes of one host pattern, the longest ``path_prefix`` first, then list order. The first route in
that order whose host, prefix, methods and headers all match the request wins.

A path prefix matches on path-segment boundaries (Kubernetes Ingress ``Prefix``): ``/api`` matches
``/api``, ``/api/`` and ``/api/x``, not ``/apix``; ``/`` matches every path; a trailing ``/`` is ignored
(``/api/`` is ``/api``). A wildcard ``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``,
not ``example.com``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Protocol

# Pool and route names: metrics label values, URL path segments (/pools/{name}), error paths.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
DEFAULT_POOL = "default"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}|\[[0-9a-f:.]+\]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_METHOD = re.compile(r"[A-Z]+")
# What a request target's path may hold (RFC 3986 pchar and "/"; a prefix is compared with the raw bytes).
_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
# Headers a route may not test: the host has its own condition, and these are the proxy's framing.
_NOT_CONDITIONS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class RouteSpec(Protocol):
    """What the checks and the matcher read of a route (``shared.config.RouteConfig`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def path_prefix(self) -> str: ...
    @property
    def methods(self) -> Sequence[str]: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def pool(self) -> str: ...
    @property
    def strip_prefix(self) -> bool: ...
    @property
    def rewrite_host(self) -> str: ...


class RouteTableError(ValueError):
    """A route table refused: ``field`` is a path such as ``routes[2].pool``; ``str()`` is ``field: problem``."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


def check_name(kind: str, name: str) -> None:
    if not NAME.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} must be 1-63 letters, digits, '_' or '-', starting with a letter or digit"
        )


def normalize_host_pattern(pattern: str) -> str:
    """``""`` (any host), an exact host (``a.example.com``, ``10.0.0.1``, ``[::1]``) or a wildcard
    (``*.example.com``), in lower case; ValueError for anything else (a port, ``*``, ``a.*.com``...)."""
    host = pattern.strip().lower()
    if host and not _HOST.fullmatch(host):
        raise ValueError(
            f"{pattern!r} is not a host name (no port), an IP address or a wildcard such as '*.example.com'"
        )
    return host


def normalize_path_prefix(prefix: str) -> str:
    """``/api/`` -> ``/api`` (a trailing ``/`` is ignored); ``/`` stays; ValueError unless a path."""
    if not _PATH.fullmatch(prefix):
        raise ValueError(f"{prefix!r} must be a path starting with '/' (no query, fragment, space or control)")
    return prefix.rstrip("/") or "/"


def normalize_methods(methods: Iterable[str]) -> list[str]:
    out: list[str] = []
    for method in methods:
        if not _METHOD.fullmatch(method):
            raise ValueError(f"{method!r} is not an upper-case HTTP method")
        if method in out:
            raise ValueError(f"{method} is listed twice")
        out.append(method)
    return out


def normalize_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header conditions with their names in lower case (the match ignores a name's case, not a value's)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        if key in _NOT_CONDITIONS:
            raise ValueError(f"{name!r} cannot be a condition (use host for the Host header)")
        if key in out:
            raise ValueError(f"{name!r} is listed twice (header names ignore case)")
        if value != value.strip() or not value.isprintable() or not value.isascii():
            raise ValueError(f"the value of {name!r} must be printable ASCII, without surrounding spaces")
        out[key] = value
    return out


def host_rank(host: str) -> tuple[int, int]:
    """Sorts first for the host patterns tried first: exact (0), wildcard by longest suffix (1), any (2)."""
    if not host:
        return (2, 0)
    if host.startswith("*."):
        return (1, -len(host))
    return (0, 0)


def precedence(routes: Sequence[RouteSpec]) -> list[int]:
    """The indices of ``routes`` in the order the matcher tries them (host rank, longest prefix, list order)."""

    def key(i: int) -> tuple[int, int, str, int, int]:
        route = routes[i]
        rank, suffix = host_rank(route.host)
        return (rank, suffix, route.host, -len(route.path_prefix), i)

    return sorted(range(len(routes)), key=key)


def covers(first: RouteSpec, later: RouteSpec) -> bool:
    """Whether ``first`` matches every request ``later`` matches, given the same host and prefix: its methods
    include ``later``'s (none: any method) and its header conditions are among ``later``'s."""
    if first.methods and (not later.methods or not set(later.methods) <= set(first.methods)):
        return False
    return all(later.headers.get(name) == value for name, value in first.headers.items())


def check_route_table(
    routes: Sequence[RouteSpec], pools: Collection[str], default_pool: str = "", *, field: str = "routes"
) -> None:
    """A whole table against the pools that exist: unique names, known pools, no route that can never match
    (an earlier route with the same host and prefix and no condition it lacks shadows it). Raises
    :class:`RouteTableError` naming the route (``routes[3].pool``). The routes are normalized already (their
    own checks ran: ``RouteConfig``)."""
    known = ", ".join(sorted(pools))
    if default_pool and default_pool not in pools:
        raise RouteTableError("default_pool", f"pool {default_pool!r} does not exist (pools: {known})")
    names: dict[str, int] = {}
    slots: dict[tuple[str, str], list[int]] = {}
    for i, route in enumerate(routes):
        at = f"{field}[{i}]"
        if route.name in names:
            also = f"{field}[{names[route.name]}]"
            raise RouteTableError(f"{at}.name", f"duplicate route name {route.name!r} (also {also})")
        names[route.name] = i
        if route.pool not in pools:
            raise RouteTableError(
                f"{at}.pool", f"route {route.name!r}: pool {route.pool!r} does not exist (pools: {known})"
            )
        earlier = slots.setdefault((route.host, route.path_prefix), [])
        for j in earlier:
            if covers(routes[j], route):
                first = routes[j]
                raise RouteTableError(
                    at,
                    f"route {route.name!r} can never match: route {first.name!r} ({field}[{j}]) comes first with "
                    f"the same host {route.host or '(any)'!r} and path_prefix {route.path_prefix!r}, and no "
                    f"method or header condition that {route.name!r} lacks",
                )
        earlier.append(i)
