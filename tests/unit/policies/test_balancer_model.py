"""StoreBalancer against a model, under random interleavings (white-box: it reads internals).

Random picks (some with exclusions), finishes in any order, jumps in the other replicas' counts,
new snapshots (backends in and out, up and down, equal or unequal weights, any algorithm), zero
entries dropped as the replica's heartbeat does, and rebuilds on the loop or in a worker thread.
After every step: this replica's local counts equal what is held, the local total (ip_hash) is
their sum, and for the equal-weight least_connections buckets each level is the global count and
the low mark the lowest non-empty bucket (what the hot path's one-level moves rely on).
"""

from __future__ import annotations

import asyncio
import random

import pytest

import services.proxy.store_balancer as store_balancer
from services.proxy.balancer import Upstream
from services.proxy.policies import Journaled
from services.proxy.policies.least_conn import _CountBuckets
from services.proxy.store_balancer import StoreBalancer
from shared.config import Config
from shared.models import AlgorithmSetting, Backend, BackendView, Health, Snapshot
from shared.replica import Replica
from shared.store import Store

ALGORITHMS = ["least_connections", "weighted_least_connections", "ip_hash", "round_robin", "p2c", "ewma", "weighted"]
ADDRS = [f"127.0.0.1:{9000 + i}" for i in range(6)]


def check(balancer: StoreBalancer, held: list[Upstream], step: int) -> None:
    local = balancer.replica.local
    model: dict[str, int] = {}
    for upstream in held:
        model[upstream.address] = model.get(upstream.address, 0) + 1
    for address in set(local) | set(model):
        assert local.get(address, 0) == model.get(address, 0), (step, address, local, model)
    if balancer.policy.reads_total:
        assert balancer.counts.local_total == sum(local.values()), step
    policy = balancer.policy.inner if isinstance(balancer.policy, Journaled) else balancer.policy
    if isinstance(policy, _CountBuckets):
        for address, level in policy._level.items():
            assert level == max(0, balancer.counts.get(address)), (step, address)
            assert address in policy._buckets[level], (step, address)
        if policy._level:
            assert policy._low == next(i for i, bucket in enumerate(policy._buckets) if bucket), step


async def drive(seed: int, background: bool, steps: int) -> None:
    rng = random.Random(seed)
    store = Store.from_url("redis://127.0.0.1:1/0", "never-connected")
    balancer = StoreBalancer(
        Config(), store, Replica(store, "proxy", ttl=5.0, heartbeat=1.0, replica_id="r1"), rng=random.Random(seed)
    )
    version = 0

    def snapshot() -> None:
        nonlocal version
        version += 1
        weighted = rng.random() < 0.5
        backends = {
            a: BackendView(
                backend=Backend(address=a, weight=rng.randint(1, 3) if weighted else 1),
                health=Health(status=rng.choice(["up", "up", "up", "down"])),
            )
            for a in rng.sample(ADDRS, rng.randint(1, len(ADDRS)))
        }
        algorithm = AlgorithmSetting(name=rng.choice(ALGORITHMS), updated_at=float(version))  # type: ignore[arg-type]
        balancer.apply(Snapshot(version=version, backends=backends, algorithm=algorithm))

    snapshot()
    held: list[Upstream] = []
    for step in range(steps):
        r = rng.random()
        if r < 0.4:
            exclude = rng.sample(ADDRS, rng.randint(0, 2)) if rng.random() < 0.3 else []
            upstream = balancer.pick(str(rng.random()), exclude)
            if upstream is not None:
                assert upstream.address not in exclude
                held.append(upstream)
        elif r < 0.75:
            if held:
                upstream = held.pop(rng.randrange(len(held)))
                balancer.finished(upstream, rng.random() < 0.95, 0.01)
        elif r < 0.8:  # a refresh of the other replicas' contributions
            others = {a: rng.randint(-1, 3) for a in rng.sample(ADDRS, rng.randint(0, 4))}
            for address in balancer.counts.set_others(others):
                balancer.policy.count_changed(address)
        elif r < 0.85:
            snapshot()
        elif r < 0.9:
            balancer.replica._drop_zeros()  # (what the heartbeat task does between pushes)
        else:
            await asyncio.sleep(0)  # scheduled rebuilds run
            if background and rng.random() < 0.3:
                await asyncio.sleep(0.001)  # a build in a worker thread may finish
        check(balancer, held, step)
    while held:
        balancer.finished(held.pop(), True)
    check(balancer, held, steps)
    await balancer.built()


@pytest.mark.parametrize("background", [False, True], ids=["builds-on-loop", "builds-in-thread"])
@pytest.mark.parametrize("seed", range(6))
async def test_counts_and_buckets_stay_exact_under_random_interleavings(
    seed: int, background: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if background:  # every rebuild in a worker thread: stale policies, journaled counts, replays
        monkeypatch.setattr(store_balancer, "SYNC_BUILD_MAX_SEC", -1.0)
    await drive(seed, background, 1500)
