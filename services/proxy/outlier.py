"""Passive health (outlier detection): pure logic, no I/O.

Consecutive failed attempts (connect failure, reset, timeout or a 5xx — ``ok`` is False in ``Balancer.finished``)
against one backend eject it for ``base_ejection_sec * n`` where n counts its recent ejections,
capped at ``max_ejection_sec``. n starts again from 1 once the backend has stayed in service for
``max_ejection_sec`` after its last ejection ended. An ejection is refused when it would leave more
than ``max_ejection_percent`` of the pool ejected (by any replica) at once: ejecting everything
would turn a partial outage into a full one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.config import OutlierConfig
from shared.models import Ejection


@dataclass
class _State:
    ejections: int = 0  # recent ejections (drives the growing interval)
    last_until: float = 0.0


class OutlierDetector:
    def __init__(self, config: OutlierConfig, replica_id: str) -> None:
        self.config = config
        self.replica_id = replica_id
        self._state: dict[str, _State] = {}
        # Consecutive failures per backend, only while there are some (a success ends the streak): the
        # hot path's success check is whether this is empty.
        self.failing: dict[str, int] = {}
        self.refused = 0  # ejections refused by the max_ejection_percent cap

    def record(
        self,
        address: str,
        ok: bool,
        at: float,
        *,
        pool_size: int,
        ejected: int | Callable[[], int],
        current: Ejection | None = None,
    ) -> Ejection | None:
        """Fold one outcome in; returns a new Ejection to apply and publish, or None.

        ``pool_size``/``ejected``: backends in the view and how many are ejected now (a callable is
        only called when an ejection is about to happen: counting is O(n)); ``current``:
        the ejection in force for ``address`` (any replica's), if any.
        """
        if ok:
            self.succeeded(address)
            return None
        state = self._state.get(address)
        if state is None:
            state = self._state[address] = _State()
        if current is not None and current.until > at:
            return None  # already out: late failures of requests started before do not extend it
        streak = self.failing[address] = self.failing.get(address, 0) + 1
        if streak < self.config.consecutive_failures:
            return None
        del self.failing[address]  # every path below starts counting again from zero
        ejected_now = ejected() if callable(ejected) else ejected
        if (ejected_now + 1) * 100 > self.config.max_ejection_percent * pool_size:
            # Refused (too much of the pool is out). Start counting again, so that a broad outage
            # costs one O(n) count per `consecutive_failures` failures, not one per failure.
            self.refused += 1
            return None
        recent = state.ejections if at - state.last_until < self.config.max_ejection_sec else 0
        if current is not None and at - current.until < self.config.max_ejection_sec:
            recent = max(recent, current.count)  # another replica's history counts too
        count = recent + 1
        duration = min(self.config.base_ejection_sec * count, self.config.max_ejection_sec)
        state.ejections = count
        state.last_until = at + duration
        return Ejection(
            replica=self.replica_id,
            until=at + duration,
            count=count,
            reason=f"{self.config.consecutive_failures} consecutive failures",
        )

    def succeeded(self, address: str) -> None:
        """A successful attempt (the caller may skip this while ``failing`` is empty)."""
        self.failing.pop(address, None)

    def tracked(self) -> list[str]:
        return list(self._state)

    def forget(self, address: str) -> None:
        self._state.pop(address, None)
        self.failing.pop(address, None)
