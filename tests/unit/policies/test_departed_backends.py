"""Backends that leave the view take their per-backend state with them: the data plane's counters
(Stats), its idle connections (Pool), the replica's request totals, latency and outlier state. A
backend with requests still in flight is forgotten once they end; one that came back is kept.
StoreBalancer fed by hand (no Redis reached)."""

from __future__ import annotations

import asyncio
import random

from services.proxy.balancer import Upstream
from services.proxy.http.pool import Pool
from services.proxy.stats import Stats, StatsTotals
from services.proxy.store_balancer import StoreBalancer
from services.proxy.view import RETIRE_SLICE, SORT_RUN, sort_addresses
from shared.config import Config
from shared.models import AlgorithmSetting, Backend, BackendView, Event, Health, Snapshot
from shared.replica import Replica
from shared.store import Store
from tests.helpers import eventually

A, B, C = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"


class Conn:
    """An idle pooled connection (what Pool holds: reusable, close, the time it went idle)."""

    reusable = True

    def __init__(self) -> None:
        self.closed = False
        self.idle_since = 0.0

    def close(self) -> None:
        self.closed = True


def snapshot(version: int, *addresses: str) -> Snapshot:
    return Snapshot(
        version=version,
        backends={a: BackendView(backend=Backend(address=a), health=Health(status="up")) for a in addresses},
        algorithm=AlgorithmSetting(name="least_connections", updated_at=1.0),
    )


def setup() -> tuple[StoreBalancer, Stats, Pool[Conn], list[str]]:
    store = Store.from_url("redis://127.0.0.1:1/0", "never-connected")
    replica = Replica(store, "proxy", ttl=5.0, heartbeat=1.0, replica_id="r1")
    balancer = StoreBalancer(Config(), store, replica, rng=random.Random(1))
    stats, pool = Stats(), Pool[Conn](4, 60.0, asyncio.get_running_loop())
    forgotten: list[str] = []
    balancer.forget_listeners += [stats.forget, pool.forget, forgotten.append]
    replica.totals_source = StatsTotals(stats)
    balancer.apply(snapshot(1, A, B, C))
    return balancer, stats, pool, forgotten


async def serve(balancer: StoreBalancer, stats: Stats, address: str, status: int = 200) -> Upstream:
    upstream = Upstream.from_address(address)
    balancer.started(upstream)
    stats.backend(address).finished(status, 0.01, 0.005)
    return upstream


async def test_a_removed_backend_is_forgotten_once_nothing_is_in_flight() -> None:
    balancer, stats, pool, forgotten = setup()
    pool.put(A, idle := Conn())
    held = await serve(balancer, stats, A)  # still in flight when A leaves
    done = await serve(balancer, stats, B)
    balancer.finished(done, ok=True, latency=0.01)
    await balancer.replica.push()  # (no Redis: the totals are kept locally all the same)
    assert set(balancer.replica.totals) == {f"{A}|2xx", f"{B}|2xx"}
    balancer.apply(Event(version=2, kind="backend_removed", address=A))
    assert balancer.prune() == 0 and A in stats.backends  # a request to A is still running
    balancer.finished(held, ok=True, latency=0.01)
    assert balancer.prune() == 1
    assert forgotten == [A]
    assert A not in stats.backends and B in stats.backends
    assert pool.idle_count(A) == 0 and idle.closed and A not in pool.idle
    assert set(balancer.replica.totals) == {f"{B}|2xx"}
    assert balancer.prune() == 0  # forgotten once


async def test_a_snapshot_without_a_backend_counts_as_its_removal() -> None:
    balancer, stats, _, forgotten = setup()
    for address in (A, B, C):
        balancer.finished(await serve(balancer, stats, address), ok=True, latency=0.01)
    balancer.apply(snapshot(5, A))
    assert balancer.prune() == 2 and sorted(forgotten) == [B, C]
    assert set(stats.backends) == {A}


async def test_a_backend_back_before_the_prune_is_kept() -> None:
    balancer, stats, _, forgotten = setup()
    balancer.finished(await serve(balancer, stats, A), ok=True, latency=0.01)
    balancer.apply(Event(version=2, kind="backend_removed", address=A))
    balancer.apply(Event(version=3, kind="backend_added", address=A, backend=Backend(address=A)))
    assert balancer.prune() == 0 and forgotten == [] and A in stats.backends


def test_totals_of_a_forgotten_backend_restart_from_zero() -> None:
    stats = Stats()
    totals = StatsTotals(stats)
    for _ in range(3):
        stats.backend(A).finished(200, 0.01, None)
    assert totals.take_totals() == {f"{A}|2xx": 3}
    stats.forget(A)
    stats.backend(A).finished(200, 0.01, None)  # back, counted from zero
    assert totals.has_totals()
    assert totals.take_totals() == {f"{A}|2xx": 1}
    stats.forget(A)
    assert totals.take_totals() == {} and totals._taken == {}


async def test_a_large_snapshot_retires_what_it_replaced_a_slice_per_turn() -> None:
    """A snapshot replacing more than RETIRE_SLICE backends leaves the comparison (and the freeing) to
    the balancer's retire task, a slice per loop turn: the ones it dropped are forgotten all the same,
    those it kept are not, and nothing waits once the task is done."""
    balancer, stats, _, forgotten = setup()
    many = [f"10.1.{i // 256}.{i % 256}:80" for i in range(3 * RETIRE_SLICE)]
    balancer.apply(snapshot(2, A, *many))
    await eventually(lambda: not balancer.view.retiring, message="the small snapshot's backends retired")
    balancer.finished(await serve(balancer, stats, B), ok=True, latency=0.01)
    prune_before = balancer.prune()  # B and C left with the second snapshot (no more in flight)
    kept, dropped = many[::2], many[1::2]
    balancer.apply(snapshot(3, A, *kept))
    assert balancer.view.retiring  # not compared in the snapshot's own turn
    turns = 0
    while balancer.view.retiring:
        await asyncio.sleep(0)
        turns += 1
    assert turns >= 3  # a slice per turn, not all at once
    assert balancer.prune() == len(dropped)
    assert set(forgotten) == {B, C, *dropped} and prune_before == 2
    assert B not in stats.backends


def test_sort_addresses_sorts_in_runs() -> None:
    rng = random.Random(7)
    addresses = [f"{rng.randrange(1 << 32):08x}.example:80" for _ in range(5 * SORT_RUN + 17)]
    assert sort_addresses(addresses) == sorted(addresses)
    assert sort_addresses(addresses[:10]) == sorted(addresses[:10])
