"""Cheap counters of the data plane (plain attribute increments; exported elsewhere later)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Stats:
    connections: int = 0  # client connections accepted
    requests: int = 0  # HTTP requests whose head was accepted
    responses: int = 0  # responses relayed from backends
    retries: int = 0
    connect_failures: int = 0
    pool_hits: int = 0
    pool_misses: int = 0
    tunnels: int = 0
    errors: Counter[int] = field(default_factory=Counter)  # status -> responses the proxy made itself

    def error(self, status: int) -> None:
        self.errors[status] += 1


class RetryBudget:
    """Retries allowed as a share of requests: each request deposits ``ratio`` tokens, a retry takes one.

    A small reserve lets a quiet proxy retry at all; the cap keeps a long calm spell from funding a
    retry storm later.
    """

    __slots__ = ("cap", "ratio", "tokens")

    def __init__(self, ratio: float, reserve: float = 10.0, cap: float = 100.0) -> None:
        self.ratio = ratio
        self.tokens = reserve
        self.cap = max(cap, reserve)

    def deposit(self) -> None:
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.cap else self.cap

    def withdraw(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
