"""``ip_hash``: Maglev consistent hashing with bounded loads.

Lookup: a table of M slots (M prime, at least 5003; 100 to 200 slots per backend up to ~650
backends, then fewer) filled the Maglev way: each backend walks its own permutation of the slots
(offset and skip from two hashes of its address) and takes the first free one, in turns proportional
to its weight. Every backend owns a share of slots proportional to its weight (±1 slot); a key's slot
is its stable 64-bit hash modulo M, so a lookup is O(1).

Removing one of N backends moves its own keys (1/N) plus Maglev's "disruption" elsewhere, which
grows with N/M: measured 1.02/N at N=5, 1.1/N at N=10, 1.75/N at N=40, 2.6/N at N=100 — always far
below the 1/N + ε bound. A new table size remaps every key, so the size moves in doublings only
(see ``table_size``), not with every backend added or removed.

Bounded loads (Mirrokni, Thorup, Zadimoghaddam): a backend may take a request only while its
global in-flight count stays within ``ceil((1 + ε) * (total + 1) * w / W)``. When the key's backend
is full the walk continues over the following slots — which belong to pseudo-random backends, like
the next points of a ring — to the first one below its cap. The caps sum to more than the load, so
someone always has room; the walk is bounded and ends in an O(n) scan that never happens in practice.

The table depends only on the addresses and weights (sorted by address, so every replica builds the
same table and a key lands on the same backend whichever proxy receives it). Slow start does not
apply here: moving keys away from a ramping backend would break affinity. Builds are cached.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Collection, Sequence

from services.proxy.policies.base import Candidate, Policy, PolicyEnv, stable_hash

MIN_TABLE = 5003
SLOTS_PER_BACKEND = 100
MAX_TABLE = 1 << 16
MAX_WALK = 64

_cache: OrderedDict[tuple[tuple[str, int], ...], tuple[list[int], int]] = OrderedDict()
_key_hashes: dict[str, int] = {}  # affinity keys repeat (client addresses): skip re-hashing them
MAX_KEY_HASHES = 1 << 16


def key_hash(key: str) -> int:
    h = _key_hashes.get(key)
    if h is None:
        if len(_key_hashes) >= MAX_KEY_HASHES:
            _key_hashes.clear()
        h = _key_hashes[key] = stable_hash(key)
    return h


def _is_prime(m: int) -> bool:
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    return all(m % d for d in range(3, math.isqrt(m) + 1, 2))


def table_size(n: int) -> int:
    """The smallest prime at or above MIN_TABLE * 2**k with enough slots per backend. The size moves in
    doublings, not with every backend added or removed: a new size remaps every key, so it must stay
    the same while the pool changes by a few backends."""
    want = max(min(SLOTS_PER_BACKEND * n, MAX_TABLE), 5 * n)
    m = MIN_TABLE
    while m < want:
        m *= 2
    while not _is_prime(m):
        m += 1
    return m


def build_table(backends: Sequence[tuple[str, int]]) -> tuple[list[int], int]:
    """Maglev population: ``table[slot]`` = index into ``backends``. O(M log M) probes, once per change."""
    key = tuple(backends)
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    n = len(backends)
    m = table_size(n)
    offsets = [stable_hash(a, b"offset") % m for a, _ in backends]
    skips = [stable_hash(a, b"skip") % (m - 1) + 1 for a, _ in backends]
    nexts = [0] * n
    table = [-1] * m
    # Turns in proportion to weight: earliest virtual deadline (k + 1) / w first, ties by index.
    turns = [(1.0 / w, i) for i, (_, w) in enumerate(backends)]
    heapq.heapify(turns)
    filled = 0
    while filled < m:
        deadline, i = turns[0]
        offset, skip, j = offsets[i], skips[i], nexts[i]
        slot = (offset + j * skip) % m
        while table[slot] >= 0:
            j += 1
            slot = (offset + j * skip) % m
        table[slot] = i
        nexts[i] = j + 1
        filled += 1
        heapq.heapreplace(turns, (deadline + 1.0 / backends[i][1], i))
    _cache[key] = (table, m)
    while len(_cache) > 4:
        _cache.popitem(last=False)
    return table, m


class MaglevHash(Policy):
    name = "ip_hash"

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv) -> None:
        super().__init__(candidates, env)
        ordered = sorted((c.address, c.weight) for c in self.candidates)
        self._addresses = [a for a, _ in ordered]
        self._weights = [w for _, w in ordered]
        self._total_weight = sum(self._weights)
        self._table, self._size = build_table(ordered) if ordered else ([], 0)

    def owner(self, key: str) -> str | None:
        """The backend the key hashes to, ignoring loads (for tests and diagnostics)."""
        if not self._table:
            return None
        return self._addresses[self._table[key_hash(key) % self._size]]

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        if not self._table:
            return None
        counts = self.env.counts
        room = (1.0 + self.env.hash_epsilon) * (counts.total() + 1) / self._total_weight
        table, size, addresses, weights = self._table, self._size, self._addresses, self._weights
        slot = key_hash(key) % size
        for _ in range(MAX_WALK):
            i = table[slot]
            address = addresses[i]
            if address not in exclude and counts.get(address) + 1 <= math.ceil(room * weights[i]):
                return address
            slot = slot + 1 if slot + 1 < size else 0
        # Pathological (caps disagreeing with stale global counts, or nearly all excluded): least loaded.
        best: str | None = None
        best_load = math.inf
        for address, weight in zip(addresses, weights, strict=True):
            if address not in exclude and (load := counts.get(address) / weight) < best_load:
                best, best_load = address, load
        return best
