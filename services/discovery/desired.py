"""The desired set of backends: what a source says should exist, handed to the reconciler.

A source publishes *whole* sets, never deltas, and only once it knows the full state (after a
successful listing). Until then ``value`` is None and the reconciler does nothing, so a fresh
leader whose source has not listed yet cannot remove anything. While a source is failing it simply
publishes nothing: the last known set stays, nothing flaps because an engine or API is unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from shared.models import Backend


class Desired:
    """The latest desired set, with a generation counter bumped on every actual change."""

    def __init__(self) -> None:
        self.value: dict[str, Backend] | None = None
        self.generation = 0
        self.changed = asyncio.Event()

    def publish(self, backends: Mapping[str, Backend]) -> bool:
        """Replace the set; True (and waiters woken) when it differs from the current one."""
        new = dict(backends)
        if self.value == new:  # Backend Structs compare field by field (sources set no timestamps)
            return False
        self.value = new
        self.generation += 1
        self.changed.set()
        return True
