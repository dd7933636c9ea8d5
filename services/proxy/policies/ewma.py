"""``ewma``: peak-EWMA latency times (in-flight + 1), two random choices (as in Finagle/linkerd).

Each backend's latency estimate jumps up to any slower observation at once (the "peak") and decays
towards faster ones with an exponential weight of time constant ``ewma_decay_sec``; when read it
also decays towards zero, so a backend that was slow long ago gets traffic again. A failed attempt
counts as a response of ``failure_latency`` seconds (at least), so failing backends look slow.
A backend with no observation yet costs 0 while idle (it gets probed) but a large penalty while it
has requests in flight (so a new backend is not flooded before its first answer).
The estimates live in ``PolicyEnv.latency`` so they survive policy rebuilds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from services.proxy.policies.base import Candidate, PolicyEnv
from services.proxy.policies.least_conn import PowerOfTwo

FAILURE_LATENCY = 1.0  # seconds: the least a failed attempt counts as
UNOBSERVED_PENALTY = 1e6


def decayed(estimate: float, stamp: float, at: float, tau: float) -> float:
    if at <= stamp or tau <= 0:
        return estimate
    return estimate * math.exp(-(at - stamp) / tau)


def update(state: tuple[float, float] | None, rtt: float, at: float, tau: float) -> tuple[float, float]:
    """The new (estimate, stamp) after observing ``rtt`` at time ``at``."""
    if state is None:
        return (rtt, at)
    estimate, stamp = state
    if rtt > estimate:
        return (rtt, at)  # peak: jump up immediately
    w = math.exp(-max(0.0, at - stamp) / tau) if tau > 0 else 0.0
    return (estimate * w + rtt * (1.0 - w), at)


class PeakEwma(PowerOfTwo):
    name = "ewma"
    learns = True

    def __init__(
        self, candidates: Sequence[Candidate], env: PolicyEnv, failure_latency: float = FAILURE_LATENCY
    ) -> None:
        super().__init__(candidates, env)
        self.failure_latency = failure_latency

    def cost(self, i: int) -> float:
        address = self._addresses[i]
        inflight = self.env.counts.get(address)
        state = self.env.latency.get(address)
        if state is None or state[0] <= 0.0:
            return 0.0 if inflight == 0 else UNOBSERVED_PENALTY + inflight
        estimate = decayed(state[0], state[1], self.env.clock(), self.env.ewma_decay_sec)
        return estimate * (inflight + 1) / self._weights[i]

    def observe(self, address: str, latency: float | None, ok: bool, at: float) -> None:
        record(self.env, address, latency, ok, at, self.failure_latency)


def record(
    env: PolicyEnv, address: str, latency: float | None, ok: bool, at: float, failure_latency: float = FAILURE_LATENCY
) -> None:
    """Fold one attempt into the latency estimate of ``address`` (the balancer calls this while the
    policy in force learns from latencies, see ``Policy.learns``)."""
    rtt = latency if latency is not None else 0.0
    if not ok:
        rtt = max(rtt, failure_latency)
    if rtt <= 0.0:
        return
    env.latency[address] = update(env.latency.get(address), rtt, at, env.ewma_decay_sec)
