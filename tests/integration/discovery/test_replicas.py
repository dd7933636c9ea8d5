"""Two discovery replicas as real processes: one leads; SIGKILL it and the other takes over within
the lease TTL, and nothing flaps (the store sees no write at all from the takeover)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from shared.models import Event, Snapshot
from shared.store import Store
from tests.helpers import eventually, service_env

TTL = 2.0
ROOT = Path(__file__).resolve().parents[3]


def write_config(path: Path, redis_url: str, namespace: str, backends: list[str]) -> None:
    lines = "".join(f"  - {{address: '{a}'}}\n" for a in backends)
    path.write_text(
        f"redis:\n  url: {redis_url}\n  namespace: {namespace}\n"
        f"discovery:\n  lease_ttl_sec: {TTL}\n  file_poll_sec: 0.1\n"
        f"logging:\n  format: json\nbackends:\n{lines}",
        encoding="utf-8",
    )


@pytest.fixture
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    running: dict[str, subprocess.Popen[bytes]] = {}
    try:
        yield running
    finally:
        for p in running.values():
            if p.poll() is None:
                p.kill()
            p.wait(5)


def spawn(path: Path, replica_id: str, log: Path) -> subprocess.Popen[bytes]:
    env = service_env(GOBALANCER_REPLICA_ID=replica_id)
    return subprocess.Popen(
        [sys.executable, "-m", "services.discovery", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


async def test_active_replica_killed_the_other_takes_over_without_flapping(
    tmp_path: Path, redis_url: str, namespace: str, store: Store, procs: dict[str, subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "gobalancer.yaml"
    static = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    write_config(path, redis_url, namespace, static)

    events: list[Event] = []
    snapshots = 0

    async def collect() -> None:
        nonlocal snapshots
        async for item in store.watch(resync_interval=0.5):
            if isinstance(item, Snapshot):
                snapshots += 1
            else:
                events.append(item)

    watcher = asyncio.create_task(collect())
    try:
        procs["a"] = spawn(path, "disc-a", tmp_path / "a.log")

        async def holder() -> str:
            return (await store.lease_holder("discovery")) or ""

        await eventually(lambda: holder(), timeout=10, message="a leads")
        assert (await holder()).startswith("disc-a:")
        await eventually(lambda: _addresses(store, static), timeout=5, message="a reconciled the static backends")
        await eventually(lambda: len(events) == 3, message="three backend_added events")
        procs["b"] = spawn(path, "disc-b", tmp_path / "b.log")
        await eventually(
            lambda: _replica_ids(store, "disc-b"), timeout=10, message="b is up (heartbeat) and standing by"
        )
        assert (await holder()).startswith("disc-a:")
        before = list(events)
        assert len(before) == 3  # the standby wrote nothing

        procs["a"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        procs["a"].wait(5)
        await eventually(lambda: _startswith(holder, "disc-b:"), timeout=TTL + 2, interval=0.02, message="b leads")
        takeover = time.monotonic() - killed
        assert takeover <= TTL + 0.25, f"takeover took {takeover:.2f}s (ttl {TTL}s)"

        # The new leader reconciles from its source's current state: nothing is removed and re-added.
        # Prove it has acted as leader by a change it must apply; the only event is that change.
        write_config(path, redis_url, namespace, [*static, "10.0.0.4:80"])
        await eventually(lambda: _addresses(store, [*static, "10.0.0.4:80"]), timeout=5, message="b applied a change")
        await eventually(lambda: len(events) > len(before))
        new = events[len(before) :]
        assert [(e.kind, e.address) for e in new] == [("backend_added", "10.0.0.4:80")]

        # A graceful stop releases the lease.
        procs["b"].send_signal(signal.SIGTERM)
        assert procs["b"].wait(10) == 0
        assert await store.lease_holder("discovery") is None
    finally:
        watcher.cancel()
        done, _ = await asyncio.wait({watcher}, timeout=5)
    assert done, "Store.watch() did not end within 5 s of cancel()"
    print(f"takeover after SIGKILL: {takeover:.2f}s (lease_ttl_sec {TTL})", file=sys.stderr)


async def _addresses(store: Store, want: list[str]) -> bool:
    return sorted(v.address for v in await store.list_backends()) == sorted(want)


async def _replica_ids(store: Store, replica_id: str) -> bool:
    return any(r.id == replica_id for r in await store.replicas("discovery"))


async def _startswith(holder: Callable[[], Awaitable[str]], prefix: str) -> bool:
    return (await holder()).startswith(prefix)
