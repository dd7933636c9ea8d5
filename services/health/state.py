"""The health checker's decisions, with no I/O: rise/fall counters per backend and the probe schedule.

The state machine (one :class:`ProbeState` per backend)
--------------------------------------------------------
A backend is ``unknown``, ``up`` or ``down``. Every probe yields a pass or a fail; only the number of
*consecutive* passes or fails since the last change of direction matters.

* ``up``: a pass resets the fail counter; ``fall`` consecutive fails make it ``down``.
* ``down``: a fail resets the pass counter; ``rise`` consecutive passes make it ``up``.
* ``unknown`` (a backend nobody has probed yet): the **first verdict decides** — one pass makes it
  ``up``, one fail makes it ``down``. Why not wait for ``rise`` passes as HAProxy does for a server it
  starts as down? An unknown backend takes no traffic (``BackendView.usable(start_healthy=False)``),
  so every extra probe before the first ``up`` is pure delay for a freshly added backend with no
  evidence against it; rise/fall exist to damp *changes of mind*, and from ``unknown`` there is no
  earlier opinion to damp. With ``start_healthy: true`` proxies already use an unknown backend, and a
  first failed probe then removes a backend that has never worked — also what one wants.

A replica that takes over probing (see ``services/health/service.py``) starts each backend from the
status stored in Redis, with zero counters, so a takeover can never flip a backend: a stored ``up``
backend still needs ``fall`` fails and a stored ``down`` one ``rise`` passes.

The schedule
------------
Jitter spreads probes so that 1,000 backends are not all probed in the same millisecond, but it only
ever *shortens* an interval: the delay between two probes of a backend is drawn from
``[interval * (1 - jitter), interval]``. That keeps the detection bound exact: once a backend dies, its
next probe starts within one interval and ``fall`` failing probes complete within
``fall * interval`` (plus the probe's own duration: ~1 ms for a refused connection, up to
``timeout_sec`` for a hung backend). The price is ``jitter / 2`` more probes on average (5 % at the
default 0.1). The first probe of a backend comes after a delay drawn from ``[0, interval * jitter]``:
soon (a new backend gets no traffic until probed) but spread at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from shared.models import HealthStatus


class Verdict(NamedTuple):
    """The outcome of one probe: passed or not, and why (``"HTTP 200"``, ``"connection refused"``)."""

    ok: bool
    reason: str


class ProbeState:
    """Consecutive pass/fail counters of one backend and the status they imply (see module docs)."""

    __slots__ = ("failures", "fall", "rise", "status", "successes")

    def __init__(self, rise: int, fall: int, status: HealthStatus = "unknown") -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.status: HealthStatus = status
        self.successes = 0  # consecutive passes (counted while down or unknown)
        self.failures = 0  # consecutive fails (counted while up or unknown)

    def observe(self, ok: bool) -> HealthStatus | None:
        """Account for one probe; return the new status when it changed, else None."""
        if ok:
            self.failures = 0
            self.successes += 1
            if self.status == "unknown" or (self.status == "down" and self.successes >= self.rise):
                return self._become("up")
        else:
            self.successes = 0
            self.failures += 1
            if self.status == "unknown" or (self.status == "up" and self.failures >= self.fall):
                return self._become("down")
        return None

    def _become(self, status: HealthStatus) -> HealthStatus:
        self.status = status
        self.successes = 0
        self.failures = 0
        return status

    def __repr__(self) -> str:
        return f"ProbeState({self.status}, passes={self.successes}, fails={self.failures})"


@dataclass(frozen=True, slots=True)
class Schedule:
    """When to probe: ``interval`` seconds apart, shortened by up to ``jitter * interval``."""

    interval: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be > 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")

    def first_delay(self, r: float) -> float:
        """Delay before a backend's first probe; ``r`` is uniform in [0, 1)."""
        return self.interval * self.jitter * r

    def next_delay(self, r: float) -> float:
        """Delay between two probe starts; ``r`` is uniform in [0, 1). Never more than ``interval``."""
        return self.interval * (1.0 - self.jitter * r)

    def next_start(self, scheduled: float, now: float, r: float) -> float:
        """The next start after a probe that was due at ``scheduled``; ``now`` is after it finished.

        Starts are anchored to the previous *due* time, not to when the timer actually fired, so
        loop latency does not accumulate into drift; a probe that overran its slot (a timeout longer
        than the interval) is followed immediately, never by a burst of catch-up probes.
        """
        return max(scheduled + self.next_delay(r), now)
