"""asyncio helpers: stopping tasks reliably, retry delays, and turns for the loop in long bursts.

On Python 3.11 a cancellation can be lost: ``asyncio.wait_for`` (used inside redis-py for socket
writes) returns the inner result instead of raising when the cancel lands just as the inner
operation completes (fixed in 3.12). A task that was cancelled once may therefore carry on, and a
plain ``gather`` after ``cancel()`` waits for it forever. So: cancel, wait briefly, cancel again.
"""

from __future__ import annotations

import asyncio
import time
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


class Turns:
    """Where a burst of already-buffered work (events from a watch) gives the loop a turn: after
    ``batch`` items or ``slice_sec`` of work, whichever comes first. The time bound matters when the
    work slows down, e.g. while a worker thread shares the GIL (each item then costs about twice as
    much): a fixed count alone would hold the loop twice as long. ``count`` is how many turns were given."""

    __slots__ = ("_items", "_since", "batch", "count", "slice_sec")

    def __init__(self, batch: int, slice_sec: float) -> None:
        self.batch, self.slice_sec = batch, slice_sec
        self.count = 0
        self._items = 0
        self._since = time.perf_counter()

    async def after_item(self) -> None:
        """Call after each item: awaits a turn of the loop when one is due."""
        self._items += 1
        if self._items < self.batch and time.perf_counter() - self._since < self.slice_sec:
            return
        self.count += 1
        await asyncio.sleep(0)
        self._items, self._since = 0, time.perf_counter()
