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
