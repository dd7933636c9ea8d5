"""The rate-limit rules as the data plane applies them: which rules a request meets, and its key for each.

Pure (no I/O): the HTTP exchange calls :meth:`Gate.check` once per request, after routing, with what it
already has (the client's address, the raw head, the route); the limiters (``limiter.Limiter``) decide
and the sync task (``sync.RateLimitSync``) reconciles them with Redis in the background.

Which rules: ``applies_to: all`` rules meet every request; ``route:NAME`` the requests of that route;
``pool:NAME`` the requests sent to that pool (a request no route matched meets only ``all`` rules). The
rules are checked in their configured order; the first that refuses answers (429) and the later ones
do not count the request. Keys: ``client_ip`` (the client as the proxy knows it: the peer, or the address
a trusted proxy names), ``rule`` (one bucket), ``header:NAME`` and ``cookie:NAME`` (read from the head
only for such rules; a request without one counts by its client address).

Cost: a proxy without rules pays one attribute test per request (``Context.gate`` is None). With rules,
the rules that meet a request are worked out once per route (a tuple per route, cached), and a
``client_ip`` rule costs its limiter's ``admit`` (34 bytecodes for a key under its limit).
"""

from __future__ import annotations

import asyncio
import re
import time

from services.proxy.limits.limiter import Limiter
from shared.config.limits import RateLimitRule, RateLimitsConfig

# Key kinds, one small int each (checked in this order of likelihood on the hot path).
CLIENT_IP, RULE, HEADER, COOKIE = range(4)


class Bound:
    """A rule with its limiter and how its key is read."""

    __slots__ = ("cookie", "field", "kind", "limiter", "rule")

    def __init__(self, rule: RateLimitRule, limiter: Limiter) -> None:
        self.rule = rule
        self.limiter = limiter
        self.cookie = rule.cookie
        header = rule.header
        # The header's field line in a raw head, compiled once per rule (linear: possessive runs).
        self.field = None if header is None else re.compile(_FIELD % re.escape(header))
        if rule.key == "client_ip":
            self.kind = CLIENT_IP
        elif rule.key == "rule":
            self.kind = RULE
        elif header is not None:
            self.kind = HEADER
        else:
            self.kind = COOKIE

    def key(self, client: str, head: bytes) -> str:
        kind = self.kind
        if kind == CLIENT_IP:
            return client
        if kind == RULE:
            return ""
        if kind == HEADER:
            assert self.field is not None
            m = self.field.search(head)
            return m.group(1).decode("latin-1") if m is not None and m.group(1) else client
        assert self.cookie is not None
        return cookie_value(head, self.cookie) or client


# A field line of a raw head (``%s``: the name, lower case): its first value without surrounding whitespace.
_FIELD = rb"\r\n(?i:%s)[ \t]*+:[ \t]*+([^\r\n]*?)[ \t]*+\r\n"


def cookie_value(head: bytes, name: bytes) -> str | None:
    """The value of cookie ``name`` in the head's Cookie fields (the first one set), else None."""
    prefix = name + b"="
    for m in re.finditer(rb"\r\n(?i:cookie)[ \t]*+:([^\r\n]*)", head):
        for part in m.group(1).split(b";"):
            part = part.strip()
            if part.startswith(prefix) and len(part) > len(prefix):
                return part[len(prefix) :].decode("latin-1")
    return None


class Gate:
    """Every rule of ``rate_limits`` with its limiter, and the rules that meet each route's requests."""

    def __init__(self, config: RateLimitsConfig, clock_offset: float = 0.0, keep: Gate | None = None) -> None:
        """``keep``: the gate these rules replace (``PUT /rate-limits``): a rule of the same name, rate, burst
        and key keeps its limiter, whose counts go on (its ``fail_closed`` follows the new rule)."""
        self.config = config
        kept = {_same(b.rule): b.limiter for b in keep.bound} if keep is not None else {}
        self.bound: list[Bound] = []
        for rule in config.rules:
            limiter = kept.pop(_same(rule), None)
            if limiter is None or limiter.max_keys != config.max_keys:
                limiter = Limiter(
                    rule.name,
                    rule.limit,
                    rule.window,
                    burst=rule.burst,
                    max_keys=config.max_keys,
                    fail_closed=rule.fail_closed,
                    offset=clock_offset,
                )
            limiter.fail_closed = rule.fail_closed
            self.bound.append(Bound(rule, limiter))
        self.limiters = [b.limiter for b in self.bound]
        self._for: dict[tuple[str, str], tuple[Bound, ...]] = {}
        # The common case: every rule applies to all requests and keys by client address (e.g. one rule).
        self.simple: Limiter | None = None
        if len(self.bound) == 1 and self.bound[0].rule.applies_to == "all" and self.bound[0].kind == CLIENT_IP:
            self.simple = self.bound[0].limiter

    @classmethod
    def for_loop(cls, config: RateLimitsConfig, loop: asyncio.AbstractEventLoop) -> Gate | None:
        """The process's gate, its limiters on ``loop``'s clock aligned to the wall clock (the sync then
        keeps them on Redis's); None without rules."""
        return cls(config, time.time() - loop.time()) if config.rules else None

    def rules_for(self, pool: str, route: str) -> tuple[Bound, ...]:
        """The rules that meet a request of ``route`` (``""``: none matched) sent to ``pool``, in order."""
        found = self._for.get((pool, route))
        if found is None:
            wanted = {"all", f"pool:{pool}", f"route:{route}"} if route else {"all", f"pool:{pool}"}
            found = self._for[(pool, route)] = tuple(b for b in self.bound if b.rule.applies_to in wanted)
        return found

    def check(self, client: str, head: bytes, pool: str, route: str, now: float) -> tuple[Bound, int] | None:
        """None: admitted by every rule that meets it (each counted it); else the refusing rule and the
        seconds to wait."""
        for bound in self.rules_for(pool, route):
            wait = bound.limiter.admit(bound.key(client, head), now)
            if wait:
                return bound, wait
        return None

    def __len__(self) -> int:
        return len(self.bound)


def _same(rule: RateLimitRule) -> tuple[str, str, int, str]:
    """What a limiter's counts depend on: a new rule equal in these keeps the old rule's limiter."""
    return rule.name, rule.rate, rule.burst, rule.key
