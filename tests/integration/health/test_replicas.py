"""Several health replicas: one leader probes, a standby takes over without flapping anything."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from services.health.service import LEASE, HealthService
from shared.aio import cancel_and_wait
from shared.config import HealthCheckConfig
from shared.store import Store
from tests.helpers import eventually
from tests.integration.health.conftest import Recorder

Fixture = Callable[..., Any]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
async def services(store: Store) -> AsyncIterator[Callable[..., Any]]:
    """``start(holder, **settings)`` -> (HealthService, its task, its stop event)."""
    tasks: list[asyncio.Task[None]] = []

    def start(holder: str, **settings: Any) -> tuple[HealthService, asyncio.Task[None], asyncio.Event]:
        settings.setdefault("timeout_sec", 0.3)
        service = HealthService(store, HealthCheckConfig(**settings), holder)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        tasks.append(task)
        return service, task, stop

    yield start
    await cancel_and_wait(tasks)


async def test_standby_takes_over_within_the_ttl_when_the_leader_dies(
    store: Store, recorder: Recorder, services: Fixture, backends: Fixture
) -> None:
    good, bad = await backends(2)
    bad.set_mode("error")
    settings = {"type": "http", "interval_sec": 0.05, "rise": 2, "fall": 2, "lease_ttl_sec": 1.0}
    a, a_task, _ = services("replica-a", **settings)
    await asyncio.wait_for(a.leading.wait(), 3)
    b, _, _ = services("replica-b", **settings)
    await recorder.wait_for(good.address, "up")
    await recorder.wait_for(bad.address, "down")
    await eventually(lambda: len(good.requests) >= 10, timeout=3)
    assert not b.leading.is_set()

    await cancel_and_wait([a_task])  # a crash: no release, the lease must lapse
    died = time.monotonic()
    await asyncio.wait_for(b.leading.wait(), 3)
    took = time.monotonic() - died
    assert took <= b.ttl + b.poll_every + 0.5, f"takeover took {took:.2f}s"
    holder = await store.lease_holder(LEASE)
    assert holder is not None and holder.startswith("replica-b:")

    served = len(good.requests)
    await eventually(lambda: len(good.requests) >= served + 10, timeout=3, message="the new leader is not probing")
    # Nothing flapped: the only health events are the first verdicts.
    assert recorder.statuses(good.address) == ["up"]
    assert recorder.statuses(bad.address) == ["down"]
    # And the new leader writes transitions.
    good.set_mode("error")
    await recorder.wait_for(good.address, "down")
    assert recorder.statuses(good.address) == ["up", "down"]


async def test_a_stopping_leader_releases_the_lease_for_a_quick_takeover(
    store: Store, recorder: Recorder, services: Fixture, backends: Fixture
) -> None:
    (good,) = await backends(1)
    settings = {"type": "http", "interval_sec": 0.05, "lease_ttl_sec": 5.0}
    a, a_task, a_stop = services("replica-a", **settings)
    await asyncio.wait_for(a.leading.wait(), 3)
    b, _, _ = services("replica-b", **settings)
    await recorder.wait_for(good.address, "up")
    a_stop.set()
    await asyncio.wait_for(a_task, 3)
    stopped = time.monotonic()
    await asyncio.wait_for(b.leading.wait(), 3)
    assert time.monotonic() - stopped <= b.poll_every + 0.3  # well within the 5 s TTL
    assert recorder.statuses(good.address) == ["up"]


async def test_only_one_replica_probes_at_a_time(store: Store, services: Fixture, backends: Fixture) -> None:
    (good,) = await backends(1)
    settings = {"type": "http", "interval_sec": 0.1, "jitter": 0.0, "lease_ttl_sec": 1.0}
    started = [services(f"replica-{i}", **settings)[0] for i in range(3)]
    await eventually(lambda: any(s.leading.is_set() for s in started), timeout=3)
    await eventually(lambda: len(good.requests) >= 3, timeout=3)
    first = len(good.requests)
    await asyncio.sleep(1.0)  # ten intervals
    probes = len(good.requests) - first
    assert sum(s.leading.is_set() for s in started) == 1
    assert 5 <= probes <= 12, f"{probes} probes in 10 intervals: more than one prober?"


# -- real processes --------------------------------------------------------------------------


def _spawn(config: Path, redis_url: str, namespace: str, replica_id: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GOBALANCER_REDIS_URL": redis_url,
        "GOBALANCER_REDIS_NAMESPACE": namespace,
        "GOBALANCER_REPLICA_ID": replica_id,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.health", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_two_processes_one_killed_with_sigkill(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, recorder: Recorder, backends: Fixture
) -> None:
    good, bad = await backends(2)
    bad.set_mode("error")
    ttl = 1.5
    config = tmp_path / "health.yaml"
    config.write_text(
        "health_check: {type: http, interval_sec: 0.1, timeout_sec: 0.3, rise: 2, fall: 2, lease_ttl_sec: 1.5}\n"
        "redis: {heartbeat_sec: 0.2, replica_ttl_sec: 1.0}\n"
        "logging: {format: json}\n"
    )
    procs = {
        name: _spawn(config, redis_url, namespace, f"health-{name}", tmp_path / f"{name}.log") for name in ("a", "b")
    }
    try:

        async def holder() -> str:
            return (await store.lease_holder(LEASE)) or ""

        async def registered() -> set[str]:
            return {r.id for r in await store.replicas(service="health")}

        first = (await eventually(holder, timeout=30, message="no health leader")).split(":")[0]
        await eventually(lambda: _has(registered, {"health-a", "health-b"}), timeout=30)
        await recorder.wait_for(good.address, "up", timeout=10)
        await recorder.wait_for(bad.address, "down", timeout=10)

        leader = first.removeprefix("health-")
        standby = "b" if leader == "a" else "a"
        procs[leader].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        procs[leader].wait(5)
        await eventually(
            lambda: _startswith(holder, f"health-{standby}:"), timeout=ttl + 3, interval=0.02, message="no takeover"
        )
        took = time.monotonic() - killed
        assert took <= ttl + min(ttl / 10, 1.0) + 0.5, f"takeover took {took:.2f}s (lease TTL {ttl}s)"
        # The dead replica's heartbeat lapses; nothing flapped during the takeover.
        await eventually(lambda: _has_not(registered, f"health-{leader}"), timeout=3)
        served = len(good.requests)
        await eventually(lambda: len(good.requests) >= served + 5, timeout=3, message="the survivor is not probing")
        assert recorder.statuses(good.address) == ["up"]
        assert recorder.statuses(bad.address) == ["down"]
        bad.set_mode("ok")
        await recorder.wait_for(bad.address, "up", timeout=3)

        procs[standby].send_signal(signal.SIGTERM)
        assert procs[standby].wait(10) == 0
        assert await store.lease_holder(LEASE) is None  # released on a clean stop
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


async def _has(fetch: Callable[[], Any], wanted: set[str]) -> bool:
    return wanted <= await fetch()


async def _has_not(fetch: Callable[[], Any], unwanted: str) -> bool:
    return unwanted not in await fetch()


async def _startswith(fetch: Callable[[], Any], prefix: str) -> bool:
    return str(await fetch()).startswith(prefix)
