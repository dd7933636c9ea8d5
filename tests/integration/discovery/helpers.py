"""Running a discovery source in the test's loop and reading what it publishes; reading the store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from services.discovery.desired import Desired
from services.discovery.sources import Source
from shared.store import Store


@contextlib.asynccontextmanager
async def running(source: Source) -> AsyncIterator[Desired]:
    """Run ``source`` into a fresh Desired; on exit it must stop within 5 s."""
    desired = Desired()
    task = asyncio.create_task(source.run(desired.publish))
    try:
        yield desired
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


def addresses(desired: Desired) -> set[str] | None:
    return None if desired.value is None else set(desired.value)


def states(desired: Desired) -> dict[str, str] | None:
    return None if desired.value is None else {a: b.state for a, b in desired.value.items()}


async def backends(store: Store) -> dict[str, tuple[int, str, str]]:
    """Every backend in the store: address -> (weight, origin, state)."""
    return {v.address: (v.backend.weight, v.backend.origin, v.backend.state) for v in await store.list_backends()}


def equals(store: Store, want: dict[str, tuple[int, str, str]]) -> Callable[[], Awaitable[bool]]:
    """A check for ``eventually``: the store's backends are exactly ``want``."""

    async def check() -> bool:
        return await backends(store) == want

    return check
