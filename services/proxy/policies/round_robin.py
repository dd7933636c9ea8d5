"""``round_robin``: plain rotation over the usable backends (weights are not used)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from services.proxy.policies.base import Candidate, Policy, PolicyEnv


class RoundRobin(Policy):
    """O(1) per pick. A backend in slow start (factor f < 1) takes its turn with probability f, so
    its share ramps up with the window instead of jumping to 1/n."""

    name = "round_robin"
    uses_counts = False

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv, start: int = 0) -> None:
        super().__init__(candidates, env)
        self._addresses = tuple([c.address for c in self.candidates])
        self._factors = tuple([c.factor for c in self.candidates])
        self._ramping = any(f < 1.0 for f in self._factors)
        self._next = start % len(self.candidates) if self.candidates else 0

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        n = len(self._addresses)
        if n == 0:
            return None
        if not exclude and not self._ramping:  # the usual case: the next turn
            i = self._next
            self._next = i + 1 if i + 1 < n else 0
            return self._addresses[i]
        # Consecutive turns are distinct backends, so len(exclude) + 1 turns find a usable one
        # unless all are excluded; slow start may pass a few more turns (bounded by a constant).
        limit = min(n, len(exclude) + (33 if self._ramping else 1))
        for _ in range(limit):
            i = self._next
            self._next = i + 1 if i + 1 < n else 0
            address = self._addresses[i]
            if address in exclude:
                continue
            if self._ramping and self._factors[i] < 1.0 and self.env.rng.random() >= self._factors[i]:
                continue
            return address
        return self.fallback(exclude)

    def inherit(self, previous: Policy) -> None:
        if isinstance(previous, RoundRobin) and self._addresses:
            self._next = previous._next % len(self._addresses)
