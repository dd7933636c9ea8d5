"""``weighted``: smooth weighted round robin, the exact sequence of NGINX's algorithm, in O(1) per pick.

NGINX's pick (ngx_http_upstream_get_peer) is O(n): every peer's ``current`` grows by its weight,
the largest ``current`` wins (the first one on ties) and loses the total weight W. With weights
5/1/1 that gives ``a a b a c a a`` and then repeats: the sequence has period W.

Why an O(D) step reproduces it exactly (D = number of distinct weights, at most 32 here):
before the pick of step t (from 0), peer i holds ``current_i = (t+1)*w_i - k_i*W`` where k_i is
how many times it was picked so far. Among peers of the *same* weight the values differ only by
k_i, so the winner of that class is the one with the smallest k_i and, on ties, the lowest index;
once picked, its k_i grows and the next one in index order becomes the class's best. So within a
class picks rotate in index order, and the class needs only a pointer ``p`` and a base count ``b``
(members before ``p`` have been picked b+1 times, the others b). The global winner is the class
whose best member has the largest ``(t+1)*w - b*W``, ties to the lower index: exact integer maths,
O(D) per step.

Faster still, when W*D is small (the usual case) one full period is precomputed with that stepper
(O(W*D) once per view change) and a pick is a list index. With more than 32 distinct weights the
policy falls back to earliest-deadline-first over a heap (each peer's next virtual deadline is
(k_i+1)/w_i): the same shares and the same smoothness bound, O(log n), but not NGINX's exact order.

Slow start: the owner scales weights (weight * ramp step) before building; see ``build_policy``.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Sequence

from services.proxy.policies.base import Candidate, Policy, PolicyEnv

MAX_CLASSES = 32  # distinct weights handled by the exact stepper
MAX_SCHEDULE_WORK = 1 << 17  # precompute one period when W * D is at most this


class _Class:
    __slots__ = ("base", "members", "pointer", "weight")

    def __init__(self, weight: int, members: list[int]) -> None:
        self.weight = weight
        self.members = members  # candidate indices, ascending
        self.pointer = 0
        self.base = 0


class SmoothStepper:
    """NGINX's smooth weighted round robin, one exact step in O(D)."""

    def __init__(self, weights: Sequence[int]) -> None:
        by_weight: dict[int, list[int]] = {}
        for i, w in enumerate(weights):
            by_weight.setdefault(w, []).append(i)
        self.classes = [_Class(w, m) for w, m in by_weight.items()]
        self.total = sum(weights)
        self.t = 0

    def step(self) -> int:
        t1, total = self.t + 1, self.total
        best: _Class | None = None
        best_value = 0
        best_index = 0
        for cls in self.classes:
            value = t1 * cls.weight - cls.base * total
            index = cls.members[cls.pointer]
            if best is None or value > best_value or (value == best_value and index < best_index):
                best, best_value, best_index = cls, value, index
        assert best is not None
        best.pointer += 1
        if best.pointer == len(best.members):
            best.pointer = 0
            best.base += 1
        self.t = t1
        return best_index


def nginx_reference(weights: Sequence[int], steps: int) -> list[int]:
    """NGINX's O(n) loop, verbatim in spirit; used by tests to check the fast versions."""
    current = [0] * len(weights)
    total = sum(weights)
    out: list[int] = []
    for _ in range(steps):
        best = -1
        for i, w in enumerate(weights):
            current[i] += w
            if best == -1 or current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


class SmoothWeighted(Policy):
    name = "weighted"
    uses_counts = False

    def __init__(self, candidates: Sequence[Candidate], env: PolicyEnv, weights: Sequence[int] | None = None) -> None:
        super().__init__(candidates, env)
        self._addresses = tuple([c.address for c in self.candidates])
        ws = list(weights) if weights is not None else [c.weight for c in self.candidates]
        self.weights = ws
        self._schedule: list[int] | None = None
        self._stepper: SmoothStepper | None = None
        self._heap: list[tuple[float, int, int]] = []
        self._picks: list[int] = []
        self._pos = 0
        if not ws:
            self.mode = "empty"
            return
        stepper = SmoothStepper(ws)
        distinct = len(stepper.classes)
        if distinct <= MAX_CLASSES and stepper.total * distinct <= MAX_SCHEDULE_WORK:
            self.mode = "schedule"
            self._schedule = [stepper.step() for _ in range(stepper.total)]
        elif distinct <= MAX_CLASSES:
            self.mode = "stepper"
            self._stepper = stepper
        else:
            self.mode = "edf"
            self._picks = [0] * len(ws)
            self._heap = [(1.0 / w, i, 0) for i, w in enumerate(ws)]
            heapq.heapify(self._heap)

    def inherit(self, previous: Policy) -> None:
        if isinstance(previous, SmoothWeighted) and self._schedule and previous._schedule:
            self._pos = previous._pos % len(self._schedule)

    def _next(self) -> int:
        if self._schedule is not None:
            i = self._schedule[self._pos]
            self._pos = self._pos + 1 if self._pos + 1 < len(self._schedule) else 0
            return i
        if self._stepper is not None:
            return self._stepper.step()
        _deadline, i, _ = heapq.heappop(self._heap)
        k = self._picks[i] = self._picks[i] + 1
        heapq.heappush(self._heap, ((k + 1) / self.weights[i], i, k))
        return i

    def pick(self, key: str, exclude: Collection[str] = ()) -> str | None:
        if not self._addresses:
            return None
        if not exclude:
            return self._addresses[self._next()]
        for _ in range(len(exclude) * 4 + 4):
            address = self._addresses[self._next()]
            if address not in exclude:
                return address
        return self.fallback(exclude)
