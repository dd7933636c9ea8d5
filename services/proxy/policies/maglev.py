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

Table size. The paper's M ≥ 100·N keeps every backend's slot share within ~1% of its weight, but the
build costs about M·ln M probes and M pointers of memory: at N = 100,000 that would be a 10M-slot
table and minutes of pure-Python build. So 100+ slots per backend only up to ~650 backends
(M ≤ 80,051, built in ~60 ms), then at least 5 (M = 640,411 at N = 100,000: ~0.7 s, 5 MB). With few
slots per backend the *key* shares are uneven (±1 slot: ±15% at 6.4 slots), but the *load* is
bounded anyway by the (1+ε) cap below, which does not depend on the table; and movement on removal
stays small (measured with 200k keys: 7/N at N = 1,000, 9/N at 10,000, 14.5/N at 100,000, i.e.
0.0145% of the keys — against the 1/N + ε bound). The population itself is the textbook table
computed faster (see :func:`populate`); large pools are built off the event loop by the owner.

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
import itertools
import math
import threading
from array import array
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence

from services.proxy.policies.base import Candidate, Policy, PolicyEnv, stable_hash

MIN_TABLE = 5003
SLOTS_PER_BACKEND = 100
MAX_TABLE = 1 << 16
MAX_WALK = 64

# Builds may run in a worker thread (see StoreBalancer) while the event loop builds small tables.
_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[tuple[str, ...], bytes], tuple[array[int], int]] = OrderedDict()
# Per address, its offset hash and its skip hash: two dicts of ints (tuples would be one object per
# backend for the garbage collector to count and traverse; a dict of str -> int is not tracked at all).
_offset_hashes: dict[str, int] = {}
_skip_hashes: dict[str, int] = {}
MAX_ADDRESS_HASHES = 1 << 18
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


def _hashes(address: str) -> tuple[int, int]:
    """The two 64-bit hashes of a backend address (offset and skip of its permutation), cached: a
    rebuild after one change re-hashes one address, not the whole pool."""
    offset = _offset_hashes.get(address)
    if offset is None:
        if len(_offset_hashes) >= MAX_ADDRESS_HASHES:
            _offset_hashes.clear()
            _skip_hashes.clear()
        offset = _offset_hashes[address] = stable_hash(address, b"offset")
        _skip_hashes[address] = stable_hash(address, b"skip")
    return offset, _skip_hashes[address]


def _turns(weights: Sequence[int]) -> Iterator[Sequence[int]]:
    """Backend indices in turn order: the order a heap of virtual deadlines would pop them in.

    Backend i's k-th deadline is 1/w_i accumulated k+1 times (floating point, as a heap would hold
    it), and turns go by (deadline, index). Backends of equal weight share every deadline, so the
    order is a merge over the distinct weights: at each distinct deadline value, the indices of the
    weight classes holding it, ascending. Yields one index list per deadline value (the whole pool
    once per round when all weights are equal), O(D) work per value instead of O(log n) per turn.
    """
    classes: dict[int, list[int]] = {}
    for i, w in enumerate(weights):
        classes.setdefault(w, []).append(i)
    if len(classes) == 1:
        members = next(iter(classes.values()))
        while True:
            yield members
    step = {w: 1.0 / w for w in classes}
    heap = [(step[w], w) for w in classes]
    heapq.heapify(heap)
    while True:
        deadline, w = heapq.heappop(heap)
        tied = [w]
        while heap and heap[0][0] == deadline:
            tied.append(heapq.heappop(heap)[1])
        for v in tied:
            heapq.heappush(heap, (deadline + step[v], v))
        yield classes[w] if len(tied) == 1 else sorted(i for v in tied for i in classes[v])


def populate(addresses: Sequence[str], weights: Sequence[int], m: int) -> array[int]:
    """Maglev population of an M-slot table (M prime): ``table[slot]`` = index into ``addresses``
    (backend i is ``addresses[i]`` with weight ``weights[i]``; columns, not pairs: a build allocates
    no object per backend that the cyclic garbage collector would have to count and traverse).

    Each backend walks its own permutation ``offset, offset + skip, ...`` (mod M) and, in its turn,
    takes the first free slot of it. Done literally that costs about M·ln M probes, most of them
    spent on the last free slots (with F slots free a turn probes M/F times on average). So:

    - while many slots are free, probe: the loop keeps everything in locals, steps the permutation
      by one addition (not ``(offset + j * skip) % M``), and tests a bytearray of taken flags,
      which stays in the CPU cache where the table does not;
    - once at most ~sqrt(2M) slots are free, a turn computes instead the permutation index
      ``(s - offset) * skip⁻¹ mod M`` of every free slot s and takes the smallest: every slot
      before the backend's position in its permutation is taken, so that is exactly the slot the
      probing would reach, found in O(F) instead of O(M/F).

    Same table as the textbook loop (``tests/unit/policies/test_ip_hash.py`` checks it against
    one), in about M·ln(sqrt(M/2)) + M steps instead of M·ln M.
    """
    # Arrays, not lists: never tracked by the garbage collector, so a collection that happens meanwhile
    # (started by any thread's allocations) does not traverse M + 3N entries.
    offsets = array("l")
    skips = array("l")
    for address in addresses:
        h_offset, h_skip = _hashes(address)
        offsets.append(h_offset % m)
        skips.append(h_skip % (m - 1) + 1)
    positions = array("l", offsets)
    table = array("l", [0]) * m
    taken = bytearray(m)  # probed instead of the table: 1 byte a slot stays in cache, table entries do not
    tail = min(m, math.isqrt(2 * m))
    limit = m - tail
    filled = 0
    order = itertools.chain.from_iterable(_turns(weights))
    if limit > 0:
        for i in order:
            slot = positions[i]
            skip = skips[i]
            while taken[slot]:
                slot += skip
                if slot >= m:
                    slot -= m
            taken[slot] = 1
            table[slot] = i
            slot += skip
            positions[i] = slot - m if slot >= m else slot
            filled += 1
            if filled == limit:
                break
    free = []
    slot = taken.find(0)
    while slot >= 0:
        free.append(slot)
        slot = taken.find(0, slot + 1)
    for i in order:
        if not free:
            break
        offset = offsets[i]
        inverse = pow(skips[i], -1, m)
        ranks = [(s - offset) * inverse % m for s in free]
        k = ranks.index(min(ranks))
        table[free[k]] = i
        free[k] = free[-1]
        free.pop()
    return table


def build_table(addresses: Sequence[str], weights: Sequence[int]) -> tuple[array[int], int]:
    """The Maglev table of backends ``addresses`` (sorted) with ``weights``, and its size; the last
    few are cached."""
    key = (tuple(addresses), array("l", weights).tobytes())
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    m = table_size(len(addresses))
    built = (populate(addresses, weights, m), m)
    with _cache_lock:
        _cache[key] = built
        while len(_cache) > 4:
            _cache.popitem(last=False)
    return built


def _address(c: Candidate) -> str:
    return c.address


class MaglevHash(Policy):
    name = "ip_hash"
    reads_total = True  # (the bounded-load cap)

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv) -> None:
        super().__init__(candidates, env)
        # By address (the view's candidates come sorted: checked, not sorted again).
        candidates = self.candidates
        addresses = [c.address for c in candidates]
        if any(addresses[i] >= addresses[i + 1] for i in range(len(addresses) - 1)):
            candidates = sorted(candidates, key=_address)
            addresses = [c.address for c in candidates]
        # The addresses tuple is shared with the table cache's key; the weights are an array: a build
        # leaves few new per-backend containers for the garbage collector to traverse (see tune_gc).
        self._addresses = tuple(addresses)
        self._weights = array("l", [c.weight for c in candidates])
        self._total_weight = sum(self._weights)
        self._table, self._size = build_table(addresses, self._weights) if addresses else (array("l"), 0)

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
