"""What every policy shares: the candidates it chooses among, the in-flight counts it reads, helpers.

Policies are pure: no asyncio, no sockets, no Redis. A policy is built in O(n) from the usable
candidates of one view of the backends and then answers :meth:`Policy.pick` in O(1) or O(log n).
When the view changes (a backend added, removed, down, ejected, re-weighted, a slow-start step) the
owner builds a new policy; when only in-flight counts change it calls :meth:`Policy.count_changed`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import msgspec


class Candidate(msgspec.Struct, frozen=True, gc=False):
    """A usable backend as a policy sees it.

    ``factor`` is the slow-start ramp in (0, 1]: the share of its weight a backend that just joined or
    recovered may take. ``weight * factor`` is its effective weight.

    ``gc=False``: there is one per usable backend (100,000 in a large view) and, holding only plain
    values, it cannot be part of a cycle: the cyclic garbage collector never tracks it (an instance of
    a class, even with slots, would be traversed by every full collection).
    """

    address: str
    weight: int = 1
    factor: float = 1.0

    @property
    def effective(self) -> float:
        return self.weight * self.factor


class Counts:
    """Global in-flight counts per backend: other replicas' contributions plus this replica's exact count.

    ``local`` is the replica's own exact table (``shared.replica.Replica.local``, updated on the hot
    path); ``others`` is replaced by a background refresh. Reads are two dict lookups. The owner that
    changes ``local`` keeps ``local_total`` (its sum) in step while a policy that ``reads_total`` is
    in force, so :meth:`total` is O(1).
    """

    __slots__ = ("_others_total", "local", "local_total", "others")

    def __init__(self, local: Mapping[str, int] | None = None) -> None:
        self.local: Mapping[str, int] = local if local is not None else {}
        self.others: dict[str, int] = {}
        self._others_total = 0
        self.local_total = sum(self.local.values())

    def get(self, address: str) -> int:
        return self.others.get(address, 0) + self.local.get(address, 0)

    def total(self) -> int:
        return self._others_total + self.local_total

    def set_others(self, others: Mapping[str, int]) -> list[str]:
        """Replace the other replicas' counts; returns the addresses whose count changed."""
        others = {a: c for a, c in others.items() if c > 0}  # (a contribution is never below 0)
        changed = [a for a, c in others.items() if self.others.get(a, 0) != c]
        changed += [a for a in self.others if a not in others]
        # In place: policies keep a reference to this dict (one attribute hop less per request).
        self.others.clear()
        self.others.update(others)
        self._others_total = sum(self.others.values())
        return changed


class MutableCounts(Counts):
    """A stand-alone count table (tests and benchmarks): ``add`` changes the local count."""

    def __init__(self) -> None:
        self._table: dict[str, int] = {}
        super().__init__(self._table)

    def add(self, address: str, delta: int) -> None:
        self._table[address] = self._table.get(address, 0) + delta
        self.local_total += delta


@dataclass
class PolicyEnv:
    """Everything a policy may read besides its candidates; injected so tests are exact."""

    counts: Counts = field(default_factory=Counts)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = field(default=lambda: 0.0)
    hash_epsilon: float = 0.25
    ewma_decay_sec: float = 10.0
    # Latency state of the ewma policy, kept here so it survives policy rebuilds.
    latency: dict[str, tuple[float, float]] = field(default_factory=dict)


class Policy:
    """Base class: a choice among candidates. Subclasses implement :meth:`pick`."""

    name: ClassVar[str] = ""
    # What the policy needs from its owner (who skips the work a policy has no use for):
    uses_counts: ClassVar[bool] = True  # in-flight counts, the other replicas' included (read from Redis)
    reads_counts: ClassVar[bool] = False  # count_changed() after every in-flight change (hot path)
    learns: ClassVar[bool] = False  # attempt latencies recorded in ``env.latency`` (hot path)
    reads_total: ClassVar[bool] = False  # Counts.total() (its local sum is kept up to date on the hot path)
    # acquire() and released() move the backend by the one request themselves (see acquire): no
    # count_changed() follows either.
    counts_acquired: ClassVar[bool] = False

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv) -> None:
        # Tuples, here and in the policies' per-backend columns: a tuple of untracked values is untracked
        # by the garbage collector's first look at it, where a list would be traversed by every collection.
        self.candidates: tuple[Candidate, ...] = tuple(candidates)
        self.env = env

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        """The address of the chosen backend; None when every candidate is excluded (or there is none)."""
        raise NotImplementedError

    def acquire(self, key: str, exclude: Collection[str] = ()) -> str | None:
        """:meth:`pick` for a request that starts there at once (the proxy's hot path).

        A policy with ``counts_acquired`` counts that request in its own structure in the same step
        (its owner adds it to the local count and calls nothing more), and :meth:`released` takes it
        off again when it ends: one move each, no recount. Both assume counts are never negative
        (``Counts.set_others`` drops negative ones). The others just pick, and their owner calls
        :meth:`count_changed` as after any change."""
        return self.pick(key, exclude)

    def released(self, address: str) -> None:
        """A request at ``address`` ended (its local count is one lower). The owner calls it for
        every request that ends while this policy is in force, whether started by acquire(), by a
        pick() and count_changed(), or under an earlier policy: a counts_acquired policy may move by
        one only because every path keeps its structure equal to the counts."""
        self.count_changed(address)

    def count_changed(self, address: str) -> None:
        """The global in-flight count of ``address`` changed (O(log n) at most)."""

    def inherit(self, previous: Policy) -> None:
        """Carry the rotation position over from the policy this one replaces (after a view change),
        so frequent rebuilds do not keep restarting a rotation at the first backend."""

    def observe(self, address: str, latency: float | None, ok: bool, at: float) -> None:
        """An attempt against ``address`` ended (latency-aware policies learn from it)."""

    def fallback(self, exclude: Collection[str]) -> str | None:
        """O(n) last resort of the retry path: the heaviest candidate not excluded."""
        best: Candidate | None = None
        for c in self.candidates:
            if c.address not in exclude and (best is None or c.effective > best.effective):
                best = c
        return best.address if best is not None else None


class Journaled(Policy):
    """A policy in force while its successor is built elsewhere (a worker thread): it forwards
    everything and remembers which addresses' counts changed, so the successor — which read the
    counts while being built — can be told about them when it takes over."""

    reads_counts = True  # journals every change, whatever the inner policy needs

    def __init__(self, inner: Policy) -> None:
        super().__init__((), inner.env)
        self.learns = inner.learns  # type: ignore[misc]
        self.uses_counts = inner.uses_counts  # type: ignore[misc]
        self.reads_total = inner.reads_total  # type: ignore[misc]
        self.inner = inner
        self.candidates = inner.candidates
        self.changed: set[str] = set()

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        return self.inner.pick(key, exclude)

    def count_changed(self, address: str) -> None:
        self.changed.add(address)
        self.inner.count_changed(address)


def stable_hash(text: str, salt: bytes = b"") -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, salt=salt).digest(), "big")


class AliasTable:
    """Vose's alias method: O(n) build, O(1) weighted sampling."""

    __slots__ = ("alias", "n", "prob")

    def __init__(self, weights: Sequence[float]) -> None:
        n = self.n = len(weights)
        self.prob = [1.0] * n
        self.alias = list(range(n))
        total = math.fsum(weights)
        if n == 0 or total <= 0:
            return
        scaled = [w * n / total for w in weights]
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            self.prob[s] = scaled[s]
            self.alias[s] = g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        for i in small + large:
            self.prob[i] = 1.0

    def sample(self, rng: random.Random) -> int:
        r = rng.random() * self.n
        i = int(r)
        if i >= self.n:  # r can round up to n
            i = self.n - 1
        return i if r - i < self.prob[i] else self.alias[i]
