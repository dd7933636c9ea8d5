"""Load-balancing policies: pure choice of a backend among usable candidates (no I/O).

``build_policy(name, candidates, env)`` builds one in O(n) (``ip_hash`` in O(M log M), cached); each
pick is O(1) or O(log n). See each module for the algorithm and its reasoning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.proxy.policies.base import AliasTable, Candidate, Counts, MutableCounts, Policy, PolicyEnv, stable_hash
from services.proxy.policies.ewma import PeakEwma
from services.proxy.policies.least_conn import LeastConnections, PowerOfTwo, WeightedLeastConnections
from services.proxy.policies.maglev import MaglevHash
from services.proxy.policies.round_robin import RoundRobin
from services.proxy.policies.slow_start import STEPS, ramp
from services.proxy.policies.smooth_weighted import SmoothWeighted

__all__ = [
    "POLICIES",
    "AliasTable",
    "Candidate",
    "Counts",
    "MutableCounts",
    "Policy",
    "PolicyEnv",
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
    "least_connections": LeastConnections,
    "weighted_least_connections": WeightedLeastConnections,
    "p2c": PowerOfTwo,
    "ip_hash": MaglevHash,
    "ewma": PeakEwma,
}


def build_policy(name: str, candidates: Sequence[Candidate], env: PolicyEnv) -> Policy:
    """The policy ``name`` over ``candidates``; an unknown name falls back to round robin."""
    return POLICIES.get(name, RoundRobin)(candidates, env)
