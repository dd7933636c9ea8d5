"""What the request handlers share, and how they get it: Litestar dependencies (``DEPENDENCIES``).

Handlers declare ``store: Store`` (writes, and reads that are not in the snapshot: replicas, health)
and ``snapshot: AdminSnapshot`` (every backend and algorithm read) and receive them; nothing else
reaches into the application state.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from litestar.datastructures import State
from litestar.di import Provide

from services.admin.metrics import AdminMetrics
from services.admin.snapshot import AdminSnapshot
from shared.config import Config
from shared.store import Store

# A write through the admin answers once the snapshot holds it; beyond this, the answer is read from Redis.
CATCH_UP_SEC = 2.0


@dataclass
class AdminContext:
    config: Config
    metrics: AdminMetrics
    snapshot: AdminSnapshot
    store: Store | None = None
    # Set when the service stops: open event streams end so the server can finish.
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def start_healthy(self) -> bool:
        return self.config.health_check.start_healthy

    @property
    def event_streams(self) -> int:
        return len(self.snapshot.subscribers)

    def require_store(self) -> Store:
        if self.store is None:  # only before the lifespan has run
            raise RuntimeError("the admin app has no store yet")
        return self.store


def context_of(state: State) -> AdminContext:
    ctx: AdminContext = state.admin
    return ctx


def provide_store(state: State) -> Store:
    return context_of(state).require_store()


def provide_snapshot(state: State) -> AdminSnapshot:
    return context_of(state).snapshot


def provide_context(state: State) -> AdminContext:
    return context_of(state)


DEPENDENCIES = {
    "store": Provide(provide_store, sync_to_thread=False),
    "snapshot": Provide(provide_snapshot, sync_to_thread=False),
    "ctx": Provide(provide_context, sync_to_thread=False),
}
