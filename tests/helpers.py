"""Helpers for tests: polling with a deadline, child processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import redis.asyncio as aioredis

from shared.processes import service_env as service_env  # (re-exported: tests import it from here)

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], *, timeout: float = ..., interval: float = ..., message: str = ...
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None], *, timeout: float = ..., interval: float = ..., message: str = ...
) -> T: ...


async def eventually(
    check: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition not met",
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``message`` at the deadline.

    The value returned is truthy, so never None: a check returning ``X | None`` yields an ``X``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        last = result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


async def redis_command(client: aioredis.Redis, *args: str | int) -> Any:
    """One raw Redis command (``ACL``, ``SENTINEL``, ``WAIT``...) and its reply, whatever its shape."""
    # redis-py leaves Redis.execute_command unannotated.
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


class LoopStalls:
    """The most CPU the event loop's thread spent between two ticks of a ticker on it (``worst``, seconds):
    the longest run of work with no chance for another connection to be served. Thread CPU time, not wall
    time: a test machine that deschedules the process is not a stall of the loop. (What worker threads
    holding the GIL cost the loop is not counted: tests/unit/policies/test_background_rebuild.py measures
    that in process CPU time.) Used as ``with LoopStalls() as stalls:`` inside the loop; ``worst`` may be
    reset to measure a later phase alone."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.thread_time()
        while True:
            await asyncio.sleep(0.001)
            now = time.thread_time()
            self.worst = max(self.worst, now - last)
            self.ticks += 1
            last = now

    def __enter__(self) -> LoopStalls:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
