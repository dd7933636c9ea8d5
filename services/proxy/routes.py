"""The route table on the hot path: which route (and so which pool) a request goes to.

Pure code: no I/O, no import of the proxy's I/O modules. Build a table once per route table version
(:meth:`RouteTable.build`, from specs checked by ``shared.config.routing.check_route_table``) and call
:meth:`RouteTable.match` per request.

Precedence — the first route in this order whose host, path prefix, methods and headers all match wins:

1. routes with an exact host (``www.example.com``);
2. routes with a wildcard host, the longest suffix first (``*.eu.example.com`` before ``*.example.com``);
   ``*.example.com`` matches a subdomain at any depth (``a.example.com``, ``a.b.example.com``), never
   ``example.com`` itself;
3. routes without a host;
4. within one host pattern: the longest ``path_prefix`` first, then list order (routes with the same host
   and prefix differ by their methods and headers: the first whose conditions hold wins).

A request none matches gets the table's ``unmatched`` route (the default pool's) or None (404). A prefix
matches on path-segment boundaries, like a Kubernetes Ingress ``Prefix`` path: ``/api`` matches ``/api``,
``/api/`` and ``/api/x``, not ``/apix``; ``/`` matches everything (``*`` too). The raw bytes of the path
are compared (no percent-decoding, no dot-segment removal), as HAProxy's ``path_beg`` does.

Input contract of :meth:`RouteTable.match`: ``host`` is the Host header lower-cased, without its port (the
caller's parser does that); ``path`` the request target up to (excluding) ``?``; ``method`` the method as
sent; ``head`` the raw request head, read only when a candidate route has a header condition.

How (no regex, no scan of the routes): a prefix can match a path only if both have the same first segment
(``/api`` of ``/api/v1/x``) or the prefix is ``/``. So every host has a *plan*: a dict from first segment to
its answer, the answer of the host's patterns merged in precedence order (its exact host, the wildcards it
falls under, the host-less routes, then ``unmatched``), with the answer for any other segment beside it.
:meth:`RouteTable.match` is a host lookup, a first-segment lookup and a check (about 30 bytecodes). Four
cases go further: a segment that more than one prefix starts with (``/api``, ``/api/v1``: the longest of
them that matches, in C over the few lengths present, about 45 more); routes of one prefix that differ by
method (a dict by method, about 25 more); a route with a header condition (the exact search, a few hundred;
header conditions are rare); and the first request from a host that is no configured exact host when there
are wildcards (its plan is made and kept, up to :data:`CACHED_HOSTS` hosts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from shared.config.routing import (
    RouteSpec,
    normalize_headers,
    normalize_host_pattern,
    normalize_methods,
    normalize_path_prefix,
)

# The labels a Route's ``label`` fills, in this order.
LABEL_NAMES: Final = ("pool", "route")
# The route name of the default pool's route (a configured name cannot hold parentheses).
UNMATCHED: Final = "(default)"


class Route:
    """One route as the proxy uses it: where to send the request and how to change it."""

    __slots__ = (
        "deferred",
        "guarded",
        "headers",
        "host",
        "index",
        "label",
        "methods",
        "name",
        "pool",
        "prefix",
        "rewrite_host",
        "strip_prefix",
    )

    def __init__(
        self,
        name: str,
        pool: str,
        *,
        index: int = -1,
        host: str = "",
        prefix: bytes = b"/",
        methods: frozenset[bytes] | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        strip_prefix: bool = False,
        rewrite_host: bytes = b"",
    ) -> None:
        self.name = name
        self.pool = pool
        self.index = index  # position in the table's list (-1: the unmatched route)
        self.host = host  # the pattern: "", "a.example.com" or "*.example.com"
        self.prefix = prefix
        self.methods = methods  # None: any method
        self.headers = headers  # (lower-case name, value) pairs, all required
        self.guarded = methods is not None or bool(headers)
        self.deferred = self.guarded  # match() must ask resolve(): a condition to check (or a _Deep)
        # strip_prefix only with a prefix to strip ("/" leaves the path as it is).
        self.strip_prefix = strip_prefix and prefix != b"/"
        self.rewrite_host = rewrite_host  # b"": the client's Host header goes on
        self.label: tuple[str, str] = (pool, name)  # the values of LABEL_NAMES

    @classmethod
    def from_spec(cls, spec: RouteSpec, index: int) -> Route:
        methods = normalize_methods(spec.methods)
        return cls(
            spec.name,
            spec.pool,
            index=index,
            host=normalize_host_pattern(spec.host),
            prefix=normalize_path_prefix(spec.path_prefix).encode("ascii"),
            methods=frozenset(m.encode("ascii") for m in methods) if methods else None,
            headers=tuple((n.encode("ascii"), v.encode("latin-1")) for n, v in normalize_headers(spec.headers).items()),
            strip_prefix=spec.strip_prefix,
            rewrite_host=spec.rewrite_host.encode("ascii"),
        )

    def admits(self, method: bytes, head: bytes) -> bool:
        """Whether the method and header conditions hold (the host and path matched already)."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.headers:
            lowered = head.lower()
            return all(has_header(head, lowered, name, value) for name, value in self.headers)
        return True

    def resolve(self, table: RouteTable, host: bytes, path: bytes, method: bytes, head: bytes) -> Route | None:
        """The answer when this route was the fast one but is ``deferred``: here, a condition to check."""
        return table.search(host, path, method, head)

    def strip(self, target: bytes) -> bytes:
        """The target with this route's prefix cut off (``/api/x?q`` -> ``/x?q``, ``/api`` -> ``/``); call it
        when ``strip_prefix`` is set."""
        rest = target[len(self.prefix) :]
        return rest if rest[:1] == b"/" else b"/" + rest

    def __repr__(self) -> str:
        return f"Route({self.name!r} -> {self.pool!r}, host={self.host!r}, prefix={self.prefix!r})"


def has_header(head: bytes, lowered: bytes, name: bytes, value: bytes) -> bool:
    """Whether a field line of ``head`` named ``name`` (lower case) holds exactly ``value`` (surrounding
    spaces and tabs ignored). ``lowered`` is ``head.lower()`` (same offsets). Linear in the head's length."""
    needle = b"\n" + name + b":"
    start = lowered.find(needle)
    while start >= 0:
        begin = start + len(needle)
        end = head.find(b"\n", begin)
        if end < 0:
            end = len(head)
        if head[begin:end].strip(b" \t\r") == value:
            return True
        start = lowered.find(needle, end)
    return False


def first_segment(path: bytes) -> bytes:
    """``/api/v1/x`` -> ``/api``; ``/api`` -> ``/api``; ``/`` -> ``/``; ``*`` -> ``*`` (up to the second ``/``).
    A prefix matches a path only if both have the same first segment (or the prefix is ``/``)."""
    i = path.find(b"/", 1)
    return path[:i] if i > 0 else path


class _Tier:
    """The routes of one host pattern."""

    __slots__ = ("lengths", "slots", "under")

    def __init__(self, routes: list[Route]) -> None:
        chains: dict[bytes, list[Route]] = {}
        for route in routes:
            chains.setdefault(route.prefix, []).append(route)
        # Per prefix, its routes in list order (they differ by their conditions: the first whose hold wins).
        self.slots = {prefix: tuple(chain) for prefix, chain in chains.items()}
        self.lengths = tuple(sorted({len(p) for p in self.slots if p != b"/"}, reverse=True))
        # The prefixes by their first segment.
        self.under: dict[bytes, list[bytes]] = {}
        for prefix in self.slots:
            if prefix != b"/":
                self.under.setdefault(first_segment(prefix), []).append(prefix)

    def answer(self, segment: bytes | None, lower: Route | None) -> Route | None:
        """The fast answer for a path whose first segment is ``segment`` (None: a segment no prefix of this
        host starts with), ``lower`` being the lower host patterns' answer (when this one has none)."""
        root = self.slots.get(b"/")
        otherwise = lower if root is None else by_method(root, lower)
        if segment is None or (prefixes := self.under.get(segment)) is None:
            return otherwise
        if prefixes == [segment]:
            return by_method(self.slots[segment], otherwise)
        return _Deep({p: self.slots[p][0] for p in prefixes}, otherwise)

    def search(self, path: bytes, method: bytes, head: bytes) -> Route | None:
        """The exact answer of this host pattern: the path's matching prefixes from the longest, each with its
        routes in list order, conditions checked."""
        size = len(path)
        for n in self.lengths:
            if (n < size and path[n] != 0x2F) or n > size:  # not a segment boundary of the path
                continue
            for route in self.slots.get(path[:n], ()):
                if route.admits(method, head):
                    return route
        for route in self.slots.get(b"/", ()):
            if route.admits(method, head):
                return route
        return None


def by_method(chain: tuple[Route, ...], otherwise: Route | None) -> Route | None:
    """The fast answer of one prefix's routes (list order): the first when it has no condition; a
    :class:`_ByMethod` when they have method conditions only; else the first (its condition sends the
    request to the exact search). ``otherwise`` answers when none of them does."""
    first = chain[0]
    if not first.guarded:
        return first
    if any(route.headers for route in chain):
        return first
    answers: dict[bytes, Route] = {}
    for route in chain:
        if route.methods is None:  # any method: the answer for the methods not named before it
            return _ByMethod(answers, route)
        for method in route.methods:
            answers.setdefault(method, route)
    return _ByMethod(answers, otherwise)


class _ByMethod(Route):
    """The fast answer of routes that differ by their methods: by the request's method."""

    __slots__ = ("answers", "other")

    def __init__(self, answers: dict[bytes, Route], other: Route | None) -> None:
        super().__init__("(by method)", "")
        self.deferred = True
        self.answers = answers  # method -> the first route naming it (its condition holds: the answer)
        self.other = other  # for any other method (a route without condition, or what comes after)

    def resolve(self, table: RouteTable, host: bytes, path: bytes, method: bytes, head: bytes) -> Route | None:
        route = self.answers.get(method)
        if route is not None:
            return route
        route = self.other
        if route is not None and route.deferred:
            return route.resolve(table, host, path, method, head)
        return route


class _Deep(Route):
    """The fast answer of a first segment that more than one prefix starts with (``/api``, ``/api/v1``): the
    longest of them that matches, else ``fallback``."""

    __slots__ = ("exact", "fallback", "slashed", "slices")

    def __init__(self, routes: dict[bytes, Route], fallback: Route | None) -> None:
        super().__init__("(deeper)", "")
        self.deferred = True
        self.exact = routes  # a path equal to a prefix
        self.slashed = {prefix + b"/": route for prefix, route in routes.items()}  # a path under one
        # The lengths to cut the path at, the longest first (slices: the loop runs in C).
        self.slices = tuple(slice(n) for n in sorted({len(key) for key in self.slashed}, reverse=True))
        self.fallback = fallback

    def resolve(self, table: RouteTable, host: bytes, path: bytes, method: bytes, head: bytes) -> Route | None:
        route = self.exact.get(path) or next(
            filter(None, map(self.slashed.get, map(path.__getitem__, self.slices))), self.fallback
        )
        if route is not None and route.deferred:
            return route.resolve(table, host, path, method, head)
        return route


class _Plan(dict[bytes, "Route | None"]):
    """One host's fast answers by first segment, its host patterns merged in precedence order; a segment
    none of them names gets ``root``."""

    __slots__ = ("root",)

    def __init__(self, tiers: Sequence[_Tier], unmatched: Route | None) -> None:
        super().__init__()
        self.root = self._answer(tiers, None, unmatched)
        self[b"/"] = self.root  # the path "/" (no prefix but "/" has it as its first segment): no __missing__
        for segment in {s for t in tiers for s in t.under}:
            self[segment] = self._answer(tiers, segment, unmatched)

    @staticmethod
    def _answer(tiers: Sequence[_Tier], segment: bytes | None, unmatched: Route | None) -> Route | None:
        answer = unmatched
        for tier in reversed(tiers):
            answer = tier.answer(segment, answer)
        return answer

    def __missing__(self, segment: bytes) -> Route | None:
        return self.root


class _Hosts(dict[bytes, _Plan]):
    """Host -> its plan. The configured exact hosts are there from the start. Every other host has the
    host-less routes' plan when there are no wildcards; else its plan (the wildcards its name falls under,
    then the host-less routes) is made on its first request and kept, up to :data:`CACHED_HOSTS` of them
    (then those are forgotten at once, and made again as they come)."""

    __slots__ = ("base", "other", "table")

    def __init__(self, table: RouteTable, base: dict[bytes, _Plan], other: _Plan | None) -> None:
        super().__init__(base)
        self.table, self.base, self.other = table, len(base), other

    def __missing__(self, host: bytes) -> _Plan:
        if self.other is not None:
            return self.other
        plan = self.table.plan(host)
        if len(host) <= 255:
            if len(self) >= self.base + CACHED_HOSTS:
                for name in list(self)[self.base :]:
                    del self[name]
            self[host] = plan
        return plan


CACHED_HOSTS: Final = 4096


class RouteTable:
    """The route table of one version: :meth:`match` per request."""

    __slots__ = ("_any", "_exact", "_hosts", "_plans", "_wild", "routes", "unmatched")

    def __init__(self, routes: list[Route], unmatched: Route | None) -> None:
        self.routes = routes  # in list order
        self.unmatched = unmatched  # the default pool's route; None: 404
        by_host: dict[str, list[Route]] = {}
        for route in routes:
            by_host.setdefault(route.host, []).append(route)
        self._exact = {h.encode("ascii"): _Tier(g) for h, g in by_host.items() if h and not h.startswith("*.")}
        # Wildcards by their suffix with its dot (b".example.com").
        self._wild = {h[1:].encode("ascii"): _Tier(g) for h, g in by_host.items() if h.startswith("*.")}
        self._any = _Tier(by_host[""]) if "" in by_host else None
        self._plans: dict[tuple[int, ...], _Plan] = {}
        other = None if self._wild else _Plan([self._any] if self._any is not None else [], unmatched)
        self._hosts = _Hosts(self, {host: self.plan(host) for host in self._exact}, other)

    @property
    def hosts(self) -> Mapping[bytes, Mapping[bytes, Route | None]]:
        """Host name -> first segment -> the fast answer (:meth:`match_segment` before its ``deferred``
        check): what the proxy's C scan looks up itself (``fast.request_route``)."""
        return self._hosts

    @classmethod
    def build(cls, routes: Sequence[RouteSpec], default_pool: str = "") -> RouteTable:
        """The table of ``routes`` (checked already: ``check_route_table``), sending what none matches to
        ``default_pool`` ("" = nowhere: :meth:`match` returns None, a 404)."""
        unmatched = Route(UNMATCHED, default_pool) if default_pool else None
        built = [Route.from_spec(spec, i) for i, spec in enumerate(routes)]
        if not built:
            return _NoRoutes(built, unmatched)
        return cls(built, unmatched)

    def match(self, host: bytes, path: bytes, method: bytes, head: bytes) -> Route | None:
        """The route of a request (see the module's docstring for the arguments), else ``unmatched``."""
        i = path.find(b"/", 1)
        route = self._hosts[host][path[:i] if i > 0 else path]
        if route is not None and route.deferred:
            return route.resolve(self, host, path, method, head)
        return route

    def match_segment(self, host: bytes, segment: bytes, path: bytes, method: bytes, head: bytes) -> Route | None:
        """:meth:`match` for a caller that has the path's first segment already (the proxy's C scan gives
        it: ``/api`` of ``/api/v1/x``, ``/`` of ``/``), saving the hot path the search for it."""
        route = self._hosts[host][segment]
        if route is not None and route.deferred:
            return route.resolve(self, host, path, method, head)
        return route

    def tiers(self, host: bytes) -> list[_Tier]:
        """The host patterns ``host`` falls under, in precedence order."""
        tiers = [self._exact[host]] if host in self._exact else []
        dot = host.find(b".", 1)  # a wildcard needs at least one character before its dot
        while dot > 0:
            tier = self._wild.get(host[dot:])
            if tier is not None:
                tiers.append(tier)
            dot = host.find(b".", dot + 1)
        if self._any is not None:
            tiers.append(self._any)
        return tiers

    def plan(self, host: bytes) -> _Plan:
        tiers = self.tiers(host)
        key = tuple(id(t) for t in tiers)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(tiers, self.unmatched)
        return plan

    def cached_hosts(self) -> int:
        """How many other hosts' plans are kept (at most :data:`CACHED_HOSTS`)."""
        return len(self._hosts) - self._hosts.base

    def search(self, host: bytes, path: bytes, method: bytes, head: bytes) -> Route | None:
        """The exact answer, conditions checked (what :meth:`match` answers, without its shortcuts)."""
        for tier in self.tiers(host):
            route = tier.search(path, method, head)
            if route is not None:
                return route
        return self.unmatched


class _NoRoutes(RouteTable):
    """A table without routes: every request goes to ``unmatched`` (the one-pool proxy)."""

    __slots__ = ()

    def match(self, host: bytes, path: bytes, method: bytes, head: bytes) -> Route | None:
        return self.unmatched

    def match_segment(self, host: bytes, segment: bytes, path: bytes, method: bytes, head: bytes) -> Route | None:
        return self.unmatched
