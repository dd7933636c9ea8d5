"""Count-based policies: ``least_connections``, ``weighted_least_connections`` and ``p2c``.

Counts are the global in-flight counts (other replicas' pushed contributions plus this replica's
exact local count, see :class:`Counts`). They change on every request start and finish, so the
structure must update in O(log n) at most. Two structures, chosen when the policy is built:

- Equal effective weights (the default: no weights set, nobody ramping up): the score is the count
  itself, so backends sit in buckets indexed by count (:class:`_CountBuckets`). A count change
  moves one backend between two buckets and a pick takes the first backend of the lowest non-empty
  bucket: O(1), independent of the number of backends. This is the hot path's common case, so it
  is kept to a few dict operations per request.
- Otherwise a binary heap keyed by (score, tie) with lazy invalidation (:class:`_ScoredHeap`).
  Every count change pushes a fresh entry and bumps the backend's version; stale entries are dropped
  when they reach the top, and the heap is rebuilt in O(n) when stale entries outnumber live ones,
  which keeps updates and picks O(log n) amortised.

Ties are broken by weighted rotation (as NGINX's least_conn breaks them by weighted round robin).
In the heap each backend carries a virtual deadline that advances by 1/weight each time it is
picked, and among equal scores the earliest deadline wins; in the buckets (all weights equal) the
picked backend goes to the back of the next bucket up (and of the one below when its request
ends). With short requests most picks see all counts at 0, so this is what makes weights and slow
start count at low concurrency.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Sequence
from typing import ClassVar

from services.proxy.policies.base import AliasTable, Candidate, Policy, PolicyEnv


class _ScoredHeap(Policy):
    """Lowest score first: (count + ``offset``) / effective weight."""

    reads_counts = True
    offset: ClassVar[int] = 0

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv) -> None:
        super().__init__(candidates, env)
        self._others, self._local = env.counts.others, env.counts.local  # (updated in place)
        self._weight = {c.address: c.effective for c in self.candidates}
        self._version = dict.fromkeys(self._weight, 0)
        self._picks = dict.fromkeys(self._weight, 0)
        self._deadline = {a: 1.0 / w for a, w in self._weight.items()}
        self._seq = itertools.count()
        self._heap: list[tuple[float, float, int, str, int]] = []
        self._limit = 2 * len(self._weight) + 64  # heap entries before stale ones are swept
        self._pending: str | None = None
        self._rebuild()

    def _entry(self, address: str) -> tuple[float, float, int, str, int]:
        return (
            (self._others.get(address, 0) + self._local.get(address, 0) + self.offset) / self._weight[address],
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

    def count_changed(self, address: str) -> None:
        if address not in self._weight:
            return
        if address == self._pending:
            self._pending = None
        self._version[address] += 1
        self._push(address)

    def _push(self, address: str) -> None:
        heapq.heappush(self._heap, self._entry(address))
        if len(self._heap) > self._limit:
            self._rebuild()

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        if self._pending is not None:  # the last pick's entry, not re-pushed by a count change yet
            pending, self._pending = self._pending, None
            self._push(pending)
        heap, version = self._heap, self._version
        skipped: list[tuple[float, float, int, str, int]] | None = None
        chosen: str | None = None
        while heap:
            entry = heap[0]
            if entry[4] != version[entry[3]]:
                heapq.heappop(heap)  # stale
                continue
            if exclude and entry[3] in exclude:
                if skipped is None:
                    skipped = []
                skipped.append(heapq.heappop(heap))
                continue
            chosen = entry[3]
            break
        if skipped is not None:
            for entry in skipped:
                heapq.heappush(heap, entry)
        if chosen is not None:
            # Weighted rotation of ties; (k + 1) / w computed afresh (not accumulated) so equal
            # deadlines compare equal.
            k = self._picks[chosen] = self._picks[chosen] + 1
            self._deadline[chosen] = (k + 1) / self._weight[chosen]
            # Its heap entry is now stale; the fresh one is pushed by the count_changed() that normally
            # follows (count_changed), or before the next pick: one push per request saved.
            version[chosen] += 1
            self._pending = chosen
        return chosen


class _CountBuckets(Policy):
    """Least count first, all effective weights equal: backends bucketed by count.

    ``_buckets[c]`` holds the backends whose count is ``c``, in rotation order (a dict used as an
    ordered set: O(1) removal anywhere, insertion at the back); ``_low`` is the lowest non-empty
    one whenever there are candidates. A change that empties it moves the mark up to where the
    backend went, scanning the empty buckets between: at most the size of that change, which is
    one for a request's start.

    The proxy's hot path calls :meth:`acquire` and :meth:`released`: the chosen backend moves to the
    back of the next bucket up, and back down when the request ends, with no recount (every
    bytecode here is paid on every request). A plain :meth:`pick` sends the chosen backend to the
    back of its own bucket, so ties rotate whether or not its count then changes.
    """

    reads_counts = True
    counts_acquired = True

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv) -> None:
        super().__init__(candidates, env)
        self._others, self._local = env.counts.others, env.counts.local  # (updated in place)
        self._level: dict[str, int] = {}
        self._buckets: list[dict[str, None]] = [{}]
        for c in self.candidates:
            level = max(0, env.counts.get(c.address))
            self._level[c.address] = level
            self._bucket(level)[c.address] = None
        self._low = min(self._level.values(), default=0)

    def _bucket(self, level: int) -> dict[str, None]:
        buckets = self._buckets
        while len(buckets) <= level:
            buckets.append({})
        return buckets[level]

    def _move(self, address: str, old: int, new: int) -> None:
        buckets = self._buckets
        bucket = buckets[old]
        del bucket[address]
        self._bucket(new)[address] = None
        self._level[address] = new
        if new < self._low:
            self._low = new
        elif old == self._low and not bucket:
            low = old
            while not buckets[low]:  # (stops at ``new`` at the latest)
                low += 1
            self._low = low

    def count_changed(self, address: str) -> None:
        old = self._level.get(address)
        if old is None:
            return
        new = self._others.get(address, 0) + self._local.get(address, 0)
        if new != old:
            self._move(address, old, new if new > 0 else 0)

    def acquire(self, key: str, exclude: Collection[str] = ()) -> str | None:
        # Its count is about to go up by one (the owner adds the request to the local count), so
        # its level does too; counts are never negative, so the level stays the count.
        if exclude:
            address = self._first(exclude)
            if address is not None:
                level = self._level[address]
                self._move(address, level, level + 1)
            return address
        low = self._low
        bucket = self._buckets[low]
        for address in bucket:  # the first one (the loop ends here: no step after the change)
            del bucket[address]
            up = low + 1
            try:
                self._buckets[up][address] = None
            except IndexError:
                self._buckets.append({address: None})
            self._level[address] = up
            if not bucket:
                self._low = up
            return address
        return None  # no candidates

    def released(self, address: str) -> None:
        try:
            level = self._level[address]
        except KeyError:  # not a candidate (the backend left the pool meanwhile)
            return
        if level:
            buckets = self._buckets
            del buckets[level][address]
            level -= 1
            buckets[level][address] = None
            self._level[address] = level
            if level < self._low:
                self._low = level

    def _first(self, exclude: Collection[str]) -> str | None:
        """The backend at the front of the lowest bucket, skipping ``exclude``."""
        buckets = self._buckets
        for level in range(self._low, len(buckets)):
            for address in buckets[level]:
                if not exclude or address not in exclude:
                    return address
        return None

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        address = self._first(exclude)
        if address is not None:  # to the back of its bucket: ties rotate
            bucket = self._buckets[self._level[address]]
            del bucket[address]
            bucket[address] = None
        return address


class LeastConnections(_ScoredHeap):
    """Fewest in-flight requests per unit of weight: count / weight."""

    name = "least_connections"


class WeightedLeastConnections(_ScoredHeap):
    """The original GoBalancer's "weighted": lowest (connections + 1) / weight."""

    name = "weighted_least_connections"
    offset = 1


class EqualLeastConnections(_CountBuckets):
    name = "least_connections"


class EqualWeightedLeastConnections(_CountBuckets):
    name = "weighted_least_connections"  # (count + 1) / w orders like count when all w are equal


def _equal_weights(candidates: Sequence[Candidate]) -> bool:
    return len({c.effective for c in candidates}) <= 1


def least_connections(candidates: Sequence[Candidate], env: PolicyEnv) -> Policy:
    return EqualLeastConnections(candidates, env) if _equal_weights(candidates) else LeastConnections(candidates, env)


def weighted_least_connections(candidates: Sequence[Candidate], env: PolicyEnv) -> Policy:
    if _equal_weights(candidates):
        return EqualWeightedLeastConnections(candidates, env)
    return WeightedLeastConnections(candidates, env)


class PowerOfTwo(Policy):
    """Two backends drawn at random in proportion to their effective weight (alias table, O(1));
    the one with fewer in-flight requests per unit of weight wins, the first drawn on ties."""

    name = "p2c"

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv) -> None:
        super().__init__(candidates, env)
        self._addresses = tuple([c.address for c in self.candidates])
        self._weights = tuple([c.effective for c in self.candidates])
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
