"""asyncio helpers: stopping tasks reliably, and retry delays.

On Python 3.11 a cancellation can be lost: ``asyncio.wait_for`` (used inside redis-py for socket
writes) returns the inner result instead of raising when the cancel lands just as the inner
operation completes (fixed in 3.12). A task that was cancelled once may therefore carry on, and a
plain ``gather`` after ``cancel()`` waits for it forever. So: cancel, wait briefly, cancel again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, retry_every: float = 0.1) -> None:
    """Cancel ``tasks`` (again and again if need be) until all are done; retrieve their exceptions."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_every)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # mark as retrieved; callers inspect results themselves if they care


class Backoff:
    """Capped exponential retry delays: ``first``, twice that, ... up to ``cap``; ``reset`` starts over."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first
