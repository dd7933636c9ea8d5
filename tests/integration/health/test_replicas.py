"""Several health replicas split the backends by shard: each backend probed by exactly one live
replica, a dead replica's shards taken over within the lease TTL (plus two rounds), nothing flapping."""

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

from services.health.scheduler import shard_of
from services.health.service import SHARDS, HealthService, shard_lease
from shared.aio import cancel_and_wait
from shared.config import HealthCheckConfig
from shared.replica import Replica
from shared.store import Store
from tests.helpers import eventually
from tests.integration.health.conftest import Recorder

Fixture = Callable[..., Any]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
async def services(store: Store) -> AsyncIterator[Callable[..., Any]]:
    """``start(holder, **settings)`` -> (HealthService, its task, its stop event): a health replica
    as main.py runs it, its heartbeat included (a crash is the cancellation of the task: both go)."""
    tasks: list[asyncio.Task[None]] = []

    def start(holder: str, **settings: Any) -> tuple[HealthService, asyncio.Task[None], asyncio.Event]:
        settings.setdefault("timeout_sec", 0.3)
        service = HealthService(store, HealthCheckConfig(**settings), holder)
        replica = Replica(store, "health", ttl=1.0, heartbeat=0.1, replica_id=holder)
        stop = asyncio.Event()

        async def run() -> None:
            heartbeat = asyncio.create_task(replica.run())
            try:
                await service.run(stop)
            finally:
                await cancel_and_wait([heartbeat])
                if stop.is_set():  # a clean stop deregisters; a crash leaves the heartbeat to lapse
                    await replica.deregister()

        task = asyncio.create_task(run())
        tasks.append(task)
        return service, task, stop

    yield start
    await cancel_and_wait(tasks)


def split(*services: HealthService) -> bool:
    """The shards are partitioned among ``services`` (each holds some, none twice, none left over),
    and so are the probed backends."""
    held = [set(s.held) for s in services]
    targets = [set(s.scheduler.targets) for s in services]
    return (
        all(held)
        and sum(len(h) for h in held) == SHARDS
        and set().union(*held) == set(range(SHARDS))
        and sum(len(t) for t in targets) == len(set().union(*targets))
    )


async def test_two_replicas_split_the_backends_with_no_overlap(
    store: Store, recorder: Recorder, services: Fixture, backends: Fixture
) -> None:
    pool = await backends(24)
    settings = {"type": "http", "interval_sec": 0.1, "jitter": 0.0, "lease_ttl_sec": 1.0}
    a, _, _ = services("replica-a", **settings)
    b, _, _ = services("replica-b", **settings)
    await eventually(
        lambda: split(a, b) and abs(len(a.held) - len(b.held)) <= 1, timeout=5, message="the shards split evenly"
    )
    for backend in pool:
        await recorder.wait_for(backend.address, "up")
    probed_by = {backend.address: [s for s in (a, b) if backend.address in s.scheduler.targets] for backend in pool}
    assert all(len(owners) == 1 for owners in probed_by.values()), probed_by
    assert {s.holder for owners in probed_by.values() for s in owners} == {"replica-a", "replica-b"}
    for backend in pool:
        owner = probed_by[backend.address][0]
        assert shard_of(backend.address, SHARDS) in owner.held
    # One prober per backend: about one probe per interval each (two probers would double it).
    first = {backend.address: len(backend.requests) for backend in pool}
    await asyncio.sleep(1.0)  # ten intervals
    probes = [len(backend.requests) - first[backend.address] for backend in pool]
    assert max(probes) <= 12 and min(probes) >= 5, probes
    assert all(recorder.statuses(backend.address) == ["up"] for backend in pool)


async def test_a_dead_replicas_backends_are_taken_over_within_the_ttl(
    store: Store, recorder: Recorder, services: Fixture, backends: Fixture
) -> None:
    pool = await backends(16)
    bad = pool[0]
    bad.set_mode("error")
    settings = {"type": "http", "interval_sec": 0.05, "rise": 2, "fall": 2, "lease_ttl_sec": 1.0}
    a, a_task, _ = services("replica-a", **settings)
    b, _, _ = services("replica-b", **settings)
    await eventually(lambda: split(a, b), timeout=5, message="the shards split between the two")
    for backend in pool[1:]:
        await recorder.wait_for(backend.address, "up")
    await recorder.wait_for(bad.address, "down")

    await cancel_and_wait([a_task])  # a crash: no release, its leases must lapse
    died = time.monotonic()
    await eventually(lambda: len(b.held) == SHARDS, timeout=5, interval=0.01, message="b holds every shard")
    took = time.monotonic() - died
    assert took <= b.ttl + 2 * b.poll_every + 0.5, f"takeover took {took:.2f}s (lease TTL {b.ttl}s)"
    assert set(b.scheduler.targets) == {backend.address for backend in pool}
    holders = {(await store.lease_holder(shard_lease(s)) or "").rsplit(":", 1)[0] for s in range(SHARDS)}
    assert holders == {"replica-b"}

    counts = {backend.address: len(backend.requests) for backend in pool}
    await eventually(
        lambda: all(len(backend.requests) >= counts[backend.address] + 5 for backend in pool),
        timeout=3,
        message="the survivor is not probing every backend",
    )
    # Nothing flapped: the only health events are the first verdicts.
    assert all(recorder.statuses(backend.address) == ["up"] for backend in pool[1:])
    assert recorder.statuses(bad.address) == ["down"]
    # And the survivor writes transitions for what it took over.
    bad.set_mode("ok")
    await recorder.wait_for(bad.address, "up")


async def test_a_stopping_replica_releases_its_shards_for_a_quick_takeover(
    store: Store, recorder: Recorder, services: Fixture, backends: Fixture
) -> None:
    pool = await backends(8)
    settings = {"type": "http", "interval_sec": 0.05, "lease_ttl_sec": 5.0}
    a, a_task, a_stop = services("replica-a", **settings)
    b, _, _ = services("replica-b", **settings)
    await eventually(lambda: split(a, b), timeout=5, message="the shards split between the two")
    for backend in pool:
        await recorder.wait_for(backend.address, "up")
    a_stop.set()
    await asyncio.wait_for(a_task, 3)
    stopped = time.monotonic()
    await eventually(lambda: len(b.held) == SHARDS, timeout=3, interval=0.01)
    assert time.monotonic() - stopped <= 2 * b.poll_every + 0.3  # well within the 5 s TTL
    assert all(recorder.statuses(backend.address) == ["up"] for backend in pool)


async def test_one_prober_per_backend_among_three_replicas(store: Store, services: Fixture, backends: Fixture) -> None:
    (good,) = await backends(1)
    settings = {"type": "http", "interval_sec": 0.1, "jitter": 0.0, "lease_ttl_sec": 1.0}
    started = [services(f"replica-{i}", **settings)[0] for i in range(3)]
    await eventually(lambda: split(*started), timeout=5, message="the shards split among the three")
    await eventually(lambda: len(good.requests) >= 3, timeout=3)
    first = len(good.requests)
    await asyncio.sleep(1.0)  # ten intervals
    probes = len(good.requests) - first
    assert sum(good.address in s.scheduler.targets for s in started) == 1
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


async def holders(store: Store) -> dict[int, str]:
    """Shard -> the replica holding its lease (free shards left out)."""
    out = {}
    for s in range(SHARDS):
        value = await store.lease_holder(shard_lease(s))
        if value is not None:
            out[s] = value.rsplit(":", 1)[0]
    return out


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

        async def both_hold() -> bool:
            held = await holders(store)
            return len(held) == SHARDS and set(held.values()) == {"health-a", "health-b"}

        await eventually(both_hold, timeout=30, message="the shards never split between the processes")
        await recorder.wait_for(good.address, "up", timeout=10)
        await recorder.wait_for(bad.address, "down", timeout=10)

        procs["a"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        procs["a"].wait(5)

        async def b_holds_all() -> bool:
            held = await holders(store)
            return len(held) == SHARDS and set(held.values()) == {"health-b"}

        poll = min(ttl / 10, 1.0)
        await eventually(b_holds_all, timeout=ttl + 3, interval=0.02, message="no takeover")
        took = time.monotonic() - killed
        assert took <= ttl + 2 * poll + 0.5, f"takeover took {took:.2f}s (lease TTL {ttl}s)"
        served = len(good.requests)
        await eventually(lambda: len(good.requests) >= served + 5, timeout=3, message="the survivor is not probing")
        assert recorder.statuses(good.address) == ["up"]
        assert recorder.statuses(bad.address) == ["down"]
        bad.set_mode("ok")
        await recorder.wait_for(bad.address, "up", timeout=3)

        procs["b"].send_signal(signal.SIGTERM)
        assert procs["b"].wait(10) == 0
        assert await holders(store) == {}  # released on a clean stop
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
