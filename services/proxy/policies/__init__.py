"""Load-balancing policies: pure choice of a backend among usable candidates (no I/O).

``build_policy(name, candidates, env)`` builds one in O(n) (``ip_hash`` in O(M log M), cached); each
pick is O(1) or O(log n). See each module for the algorithm and its reasoning. Building is pure and
thread-safe (the owner builds large pools in a worker thread); ``build_cost`` estimates its time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.proxy.policies.base import (
    AliasTable,
    Candidate,
    Counts,
    Journaled,
    MutableCounts,
    Policy,
    PolicyEnv,
    stable_hash,
)
from services.proxy.policies.ewma import PeakEwma
from services.proxy.policies.least_conn import PowerOfTwo, least_connections, weighted_least_connections
from services.proxy.policies.maglev import MaglevHash, table_size
from services.proxy.policies.round_robin import RoundRobin
from services.proxy.policies.slow_start import STEPS, ramp
from services.proxy.policies.smooth_weighted import SmoothWeighted

__all__ = [
    "POLICIES",
    "AliasTable",
    "Candidate",
    "Counts",
    "Journaled",
    "MutableCounts",
    "Policy",
    "PolicyEnv",
    "build_cost",
    "build_policy",
    "ramp",
    "stable_hash",
]


def _weighted(candidates: Sequence[Candidate], env: PolicyEnv) -> Policy:
    # Integer weights for the exact smooth sequence; while some backend ramps, weights are scaled by
    # STEPS so a ramp step k/STEPS is the integer weight * k.
    if any(c.factor < 1.0 for c in candidates):
        weights = [max(1, round(c.weight * c.factor * STEPS)) for c in candidates]
    else:
        weights = [c.weight for c in candidates]
    return SmoothWeighted(candidates, env, weights)


POLICIES: dict[str, Callable[[Sequence[Candidate], PolicyEnv], Policy]] = {
    "round_robin": RoundRobin,
    "weighted": _weighted,
    "least_connections": least_connections,
    "weighted_least_connections": weighted_least_connections,
    "p2c": PowerOfTwo,
    "ip_hash": MaglevHash,
    "ewma": PeakEwma,
}


def build_policy(name: str, candidates: Sequence[Candidate], env: PolicyEnv) -> Policy:
    """The policy ``name`` over ``candidates``; an unknown name falls back to round robin."""
    return POLICIES.get(name, RoundRobin)(candidates, env)


# Seconds per unit of build work, measured on a busy 2-core machine (``python -m bench policies``):
# ip_hash ~1 µs per Maglev slot; the others ~2.5 µs per backend at most (least_connections' heap),
# plus ~1 µs per backend for the view's candidates.
SLOT_COST_SEC = 1.0e-6
BACKEND_COST_SEC = 3.5e-6


def build_cost(name: str, backends: int) -> float:
    """Rough seconds to compute the candidates and build policy ``name`` over ``backends`` backends:
    the owner uses it to decide whether a build may run on the event loop or goes to a thread."""
    if backends <= 0:
        return 0.0
    if name == "ip_hash":
        return table_size(backends) * SLOT_COST_SEC + backends * BACKEND_COST_SEC
    return backends * BACKEND_COST_SEC
