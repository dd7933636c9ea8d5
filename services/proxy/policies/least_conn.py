"""Count-based policies: ``least_connections``, ``weighted_least_connections`` and ``p2c``.

Counts are the global in-flight counts (other replicas' pushed contributions plus this replica's
exact local count, see :class:`Counts`). They change on every request start and finish, so the
structure must update in O(log n): a binary heap keyed by (score, tie) with lazy invalidation.
Every count change pushes a fresh entry and bumps the backend's version; stale entries are dropped
when they reach the top, and the heap is rebuilt in O(n) when stale entries outnumber live ones,
which keeps updates and picks O(log n) amortised.

Ties are broken by weighted rotation (as NGINX's least_conn breaks them by weighted round robin):
each backend carries a virtual deadline that advances by 1/weight each time it is picked, and among
equal scores the earliest deadline wins. With short requests most picks see all counts at 0, so
this is what makes weights and slow start count at low concurrency.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Sequence

from services.proxy.policies.base import AliasTable, Candidate, Policy, PolicyEnv


class _ScoredHeap(Policy):
    """Lowest score first; subclasses define the score from the count and the effective weight."""

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv) -> None:
        super().__init__(candidates, env)
        self._weight = {c.address: c.effective for c in self.candidates}
        self._version = dict.fromkeys(self._weight, 0)
        self._picks = dict.fromkeys(self._weight, 0)
        self._deadline = {a: 1.0 / w for a, w in self._weight.items()}
        self._seq = itertools.count()
        self._heap: list[tuple[float, float, int, str, int]] = []
        self._pending: str | None = None
        self._rebuild()

    def score(self, count: int, weight: float) -> float:
        raise NotImplementedError

    def _entry(self, address: str) -> tuple[float, float, int, str, int]:
        counts = self.env.counts
        return (
            self.score(counts.others.get(address, 0) + counts.local.get(address, 0), self._weight[address]),
            self._deadline[address],
            next(self._seq),
            address,
            self._version[address],
        )

    def _rebuild(self) -> None:
        # Initial order: candidates in view order, so ties start in a deterministic rotation.
        self._pending = None
        self._heap = [self._entry(a) for a in self._weight]
        heapq.heapify(self._heap)

    def _push(self, address: str) -> None:
        heapq.heappush(self._heap, self._entry(address))
        if len(self._heap) > 2 * len(self._weight) + 64:
            self._rebuild()

    def _touch(self, address: str) -> None:
        if address == self._pending:
            self._pending = None
        self._version[address] += 1
        self._push(address)

    def count_changed(self, address: str) -> None:
        if address in self._weight:
            self._touch(address)

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        if self._pending is not None:  # the last pick's entry, not re-pushed by a started() yet
            pending, self._pending = self._pending, None
            self._push(pending)
        heap, version = self._heap, self._version
        skipped: list[tuple[float, float, int, str, int]] = []
        chosen: str | None = None
        while heap:
            entry = heap[0]
            if entry[4] != version[entry[3]]:
                heapq.heappop(heap)  # stale
                continue
            if entry[3] in exclude:
                skipped.append(heapq.heappop(heap))
                continue
            chosen = entry[3]
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        if chosen is not None:
            # Weighted rotation of ties; (k + 1) / w computed afresh (not accumulated) so equal
            # deadlines compare equal.
            k = self._picks[chosen] = self._picks[chosen] + 1
            self._deadline[chosen] = (k + 1) / self._weight[chosen]
            # Its heap entry is now stale; the fresh one is pushed by the started() that normally
            # follows (count_changed), or before the next pick: one push per request saved.
            version[chosen] += 1
            self._pending = chosen
        return chosen


class LeastConnections(_ScoredHeap):
    """Fewest in-flight requests per unit of weight: count / weight."""

    name = "least_connections"

    def score(self, count: int, weight: float) -> float:
        return count / weight


class WeightedLeastConnections(_ScoredHeap):
    """The original GoBalancer's "weighted": lowest (connections + 1) / weight."""

    name = "weighted_least_connections"

    def score(self, count: int, weight: float) -> float:
        return (count + 1) / weight


class PowerOfTwo(Policy):
    """Two backends drawn at random in proportion to their effective weight (alias table, O(1));
    the one with fewer in-flight requests per unit of weight wins, the first drawn on ties."""

    name = "p2c"

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv) -> None:
        super().__init__(candidates, env)
        self._addresses = [c.address for c in self.candidates]
        self._weights = [c.effective for c in self.candidates]
        self._alias = AliasTable(self._weights)

    def cost(self, i: int) -> float:
        return self.env.counts.get(self._addresses[i]) / self._weights[i]

    def _draw(self, exclude: Collection[str]) -> int | None:
        for _ in range(len(exclude) * 2 + 4):
            i = self._alias.sample(self.env.rng)
            if self._addresses[i] not in exclude:
                return i
        return None

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        n = len(self._addresses)
        if n == 0:
            return None
        a = self._draw(exclude)
        if a is None:
            return self.fallback(exclude)
        if n == 1:
            return self._addresses[a]
        b = self._draw(exclude)
        if b is None or b == a:
            b = self._draw(exclude)  # one more try for a distinct second choice
        if b is None or b == a:
            b = (a + 1 + self.env.rng.randrange(n - 1)) % n  # then any other one, uniformly
            if self._addresses[b] in exclude:
                return self._addresses[a]
        return self._addresses[b] if self.cost(b) < self.cost(a) else self._addresses[a]
