"""Fixtures for the health tests: a recorder of published health events, schedulers, backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.health.scheduler import Scheduler
from shared.aio import cancel_and_wait
from shared.config import DEFAULT_POOL, HealthCheckConfig, ProbeConfig
from shared.models import Backend, Snapshot
from shared.store import Lease, Store
from tests.integration.health.backends import HttpBackend, Mode


@dataclass
class Recorder:
    """Every health event published in the namespace, with the monotonic time it was received."""

    store: Store
    events: list[tuple[str, str, float, str]] = field(default_factory=list)  # address, status, at, reason
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    resyncs: int = 0

    async def run(self) -> None:
        async for item in self.store.watch():
            if isinstance(item, Snapshot):
                if self.ready.is_set():
                    self.resyncs += 1  # events folded into a snapshot would be missed: tests check this
                self.ready.set()
            elif item.kind == "health" and item.health is not None and item.address:
                self.events.append((item.address, item.health.status, time.monotonic(), item.health.reason))

    def statuses(self, address: str) -> list[str]:
        return [status for addr, status, _, _ in self.events if addr == address]

    def last(self, address: str) -> tuple[str, float, str] | None:
        for addr, status, at, reason in reversed(self.events):
            if addr == address:
                return status, at, reason
        return None

    async def wait_for(self, address: str, status: str, count: int = 1, timeout: float = 5.0) -> float:
        """Wait until ``address`` has had ``count`` events with ``status``; return the last one's time."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [at for addr, st, at, _ in self.events if addr == address and st == status]
            if len(hits) >= count:
                return hits[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"{address} never became {status} x{count}: {self.statuses(address)}")
            await asyncio.sleep(0.005)


@pytest.fixture
async def recorder(store: Store) -> AsyncIterator[Recorder]:
    rec = Recorder(store)
    task = asyncio.create_task(rec.run())
    await asyncio.wait_for(rec.ready.wait(), 5)
    yield rec
    await cancel_and_wait([task])
    assert rec.resyncs == 0, "the recorder re-synced: it may have missed events"


@pytest.fixture
async def start_scheduler(store: Store) -> AsyncIterator[Callable[..., Any]]:
    """``await start_scheduler(fence=None, pools=None, **health_check_settings)`` -> a running Scheduler
    (``pools``: the configuration's ``pools.NAME.health_check`` sections)."""
    running: list[asyncio.Task[None]] = []

    async def start(
        fence: Lease | None = None, pools: Mapping[str, ProbeConfig] | None = None, **settings: Any
    ) -> Scheduler:
        settings.setdefault("timeout_sec", 0.5)
        config = HealthCheckConfig(**settings)
        scheduler = Scheduler(store, config, fence=fence, pools=pools)
        running.append(asyncio.create_task(scheduler.run()))
        await asyncio.wait_for(scheduler.synced.wait(), 5)
        return scheduler

    yield start
    await cancel_and_wait(running)


@pytest.fixture
async def backends(store: Store) -> AsyncIterator[Callable[..., Any]]:
    """``await backends(n, mode="ok", register=True, pool="default")`` -> started HttpBackends (added to the
    store, in ``pool``); all stopped at the end of the test."""
    started: list[HttpBackend] = []

    async def make(n: int = 1, mode: Mode = "ok", register: bool = True, pool: str = DEFAULT_POOL) -> list[HttpBackend]:
        out = [await HttpBackend(mode).start() for _ in range(n)]
        started.extend(out)
        if register:
            for b in out:
                await store.create_backend(Backend(address=b.address, pool=pool))
        return out

    yield make
    for b in started:
        await b.die()
