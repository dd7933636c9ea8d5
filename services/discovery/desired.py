"""The desired set of backends: what a source says should exist, handed to the reconciler.

A source publishes *whole* sets, never deltas, and only once it knows the full state (after a
successful listing). Until then ``value`` is None and the reconciler does nothing, so a fresh
leader whose source has not listed yet cannot remove anything. While a source is failing it simply
publishes nothing: the last known set stays, nothing flaps because an engine or API is unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from services.discovery.seeding import DesiredSettings
from shared.models import Backend


class Desired:
    """The latest desired set, with a generation counter bumped on every actual change."""

    def __init__(self) -> None:
        self.value: dict[str, Backend] | None = None
        self.settings: DesiredSettings | None = None  # the source's pools and routes (None: it has none)
        self.generation = 0
        self.changed = asyncio.Event()

    def publish(self, backends: Mapping[str, Backend], settings: DesiredSettings | None = None) -> bool:
        """Replace the set (and the source's settings); True (and waiters woken) when either differs."""
        new = dict(backends)
        # Backend Structs compare field by field (sources set no timestamps)
        if self.value == new and self.settings == settings:
            return False
        self.value = new
        self.settings = settings
        self.generation += 1
        self.changed.set()
        return True
