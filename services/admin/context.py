"""What the request handlers share: the store, the settings they need, metrics and the closing signal."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from litestar.datastructures import State

from services.admin.metrics import AdminMetrics
from shared.config import Config
from shared.store import Store


@dataclass
class AdminContext:
    config: Config
    metrics: AdminMetrics
    store: Store | None = None
    # Set when the service stops: open event streams end so the server can finish.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    event_streams: int = 0
    # Each /events stream holds its own Redis pub/sub connection: beyond this many, 503.
    max_event_streams: int = 256

    @property
    def start_healthy(self) -> bool:
        return self.config.health_check.start_healthy

    def require_store(self) -> Store:
        if self.store is None:  # only before the lifespan has run
            raise RuntimeError("the admin app has no store yet")
        return self.store


def context_of(state: State) -> AdminContext:
    ctx: AdminContext = state.admin
    return ctx
