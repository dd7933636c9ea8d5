"""Running a discovery source in the test's loop and reading what it publishes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from services.discovery.desired import Desired
from services.discovery.sources import Source


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
