"""StoreBalancer fed by hand (no Redis reached): slow start end to end, live algorithm switch,
local ejection and its end, exclude — with an injected clock and seeded randomness."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from services.proxy.balancer import Upstream
from services.proxy.store_balancer import StoreBalancer
from shared.config import Config, OutlierConfig
from shared.models import Algorithm, AlgorithmSetting, Backend, BackendView, Event, Health, Snapshot
from shared.replica import Replica
from shared.store import Store
from tests.helpers import eventually

ADDRS = ["127.0.0.1:9201", "127.0.0.1:9202"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(algorithm: str = "round_robin", slow_start: float = 0.0) -> tuple[StoreBalancer, Clock]:
    config = Config()
    config.balancing.slow_start_sec = slow_start  # type: ignore[assignment]
    config.balancing.outlier = OutlierConfig(consecutive_failures=2, base_ejection_sec=5.0)  # type: ignore[arg-type]
    store = Store.from_url("redis://127.0.0.1:1/0", "never-connected")
    replica = Replica(store, "proxy", ttl=5.0, heartbeat=1.0, replica_id="r1")
    clock = Clock()
    balancer = StoreBalancer(config, store, replica, clock=clock, rng=random.Random(4))
    balancer.apply(
        Snapshot(
            version=1,
            backends={a: BackendView(backend=Backend(address=a), health=Health(status="up")) for a in ADDRS},
            algorithm=AlgorithmSetting(name=algorithm, updated_at=1.0),  # type: ignore[arg-type]
        )
    )
    return balancer, clock


def share(balancer: StoreBalancer, address: str, n: int = 4000) -> float:
    """The share of ``n`` short requests (each over before the next: a pick counts it in flight)."""
    got: Counter[str] = Counter()
    for i in range(n):
        upstream = balancer.pick(str(i))
        if upstream is not None:
            got[upstream.address] += 1
            balancer.finished(upstream, True)
    return got[address] / n


@pytest.mark.parametrize("algorithm", ["round_robin", "weighted", "least_connections", "p2c"])
def test_slow_start_ramps_the_share_of_a_recovered_backend(algorithm: str) -> None:
    balancer, clock = make(algorithm, slow_start=10.0)
    assert share(balancer, ADDRS[1]) == pytest.approx(0.5, abs=0.03)
    balancer.apply(Event(version=2, kind="health", address=ADDRS[1], health=Health(status="down")))
    assert share(balancer, ADDRS[1]) == 0.0
    balancer.apply(Event(version=3, kind="health", address=ADDRS[1], health=Health(status="up")))
    shares = []
    for elapsed in (0.5, 4.5, 9.5, 10.5):
        clock.now = 1000.0 + elapsed
        shares.append(share(balancer, ADDRS[1]))
    # effective weight 0.1, 0.5, 1.0 (last step), 1.0 of the other's: share f / (1 + f)
    expected = [0.1 / 1.1, 0.5 / 1.5, 0.5, 0.5]
    tolerance = 0.06 if algorithm == "p2c" else 0.03
    for got, want in zip(shares, expected, strict=True):
        assert got == pytest.approx(want, abs=tolerance), shares


def test_algorithm_event_switches_the_policy() -> None:
    balancer, _ = make("round_robin")
    assert balancer.pick("k") is not None and balancer.policy.name == "round_robin"
    balancer.apply(Event(version=2, kind="algorithm", algorithm=AlgorithmSetting(name="ewma", updated_at=2.0)))
    assert balancer.pick("k") is not None and balancer.policy.name == "ewma"


def test_store_without_an_algorithm_uses_the_configured_one() -> None:
    balancer, _ = make("round_robin")
    balancer.config.algorithm = "p2c"
    balancer.apply(Snapshot(version=5, backends=balancer.view.backends, algorithm=AlgorithmSetting()))
    balancer.pick("k")
    assert balancer.policy.name == "p2c"


def test_failures_eject_locally_at_once_then_the_backend_returns_ramping() -> None:
    balancer, clock = make("round_robin", slow_start=2.0)
    bad = Upstream.from_address(ADDRS[0])
    for _ in range(2):
        balancer.started(bad)
        balancer.finished(bad, False)
    assert not any(balancer.replica.local.values())  # counts back to zero
    assert share(balancer, ADDRS[0], 100) == 0.0
    assert balancer._pending_ejections[ADDRS[0]].until == clock.now + 5.0  # queued for publication
    clock.now += 5.0
    assert 0.0 < share(balancer, ADDRS[0], 2000) < 0.2  # back, at 1/10 of its weight
    clock.now += 2.0
    assert share(balancer, ADDRS[0], 2000) == pytest.approx(0.5, abs=0.03)


def test_exclude_and_nothing_usable() -> None:
    balancer, _ = make("least_connections")
    assert {balancer.pick(str(i), exclude={ADDRS[0]}) for i in range(20)} == {Upstream.from_address(ADDRS[1])}
    assert balancer.pick("k", exclude=set(ADDRS)) is None
    for address in ADDRS:
        balancer.apply(Event(version=9, kind="backend_removed", address=address))
    assert balancer.pick("k") is None


def test_round_robin_rotation_survives_unrelated_view_changes() -> None:
    balancer, _ = make("round_robin")
    picks = []
    for i in range(6):
        upstream = balancer.pick("k")
        assert upstream is not None
        picks.append(upstream.address)
        balancer.apply(Event(version=10 + i, kind="health", address="127.0.0.1:1", health=Health(status="up")))
    assert picks == ADDRS * 3  # not ADDRS[0] after every rebuild


def test_per_backend_state_is_forgotten_when_a_backend_leaves() -> None:
    store = Store.from_url("redis://127.0.0.1:1/0", "never-connected")
    balancer = StoreBalancer(Config(), store, Replica(store, "proxy", ttl=5, heartbeat=1), rng=random.Random(1))
    up = Health(status="up")
    balancer.apply(
        Snapshot(
            version=1,
            backends={a: BackendView(backend=Backend(address=a), health=up) for a in ("a:1", "b:1", "c:1")},
            algorithm=AlgorithmSetting(name="ewma", updated_at=1.0),  # the policy that keeps latencies
        )
    )
    balancer.rebuild()
    for address in ("a:1", "b:1", "c:1"):
        u = Upstream.from_address(address)
        balancer.started(u)
        balancer.finished(u, False, 0.01)
    assert set(balancer.env.latency) == {"a:1", "b:1", "c:1"}
    balancer.apply(Event(version=2, kind="backend_removed", address="a:1", backend=Backend(address="a:1")))
    assert "a:1" not in balancer.env.latency and "a:1" not in balancer.outlier.tracked()
    balancer.apply(
        Snapshot(
            version=3,
            backends={"c:1": BackendView(backend=Backend(address="c:1"), health=up)},
            algorithm=AlgorithmSetting(name="ewma", updated_at=1.0),
        )
    )
    assert set(balancer.env.latency) == {"c:1"} and balancer.outlier.tracked() == ["c:1"]


def test_only_a_latency_aware_policy_pays_for_latency_estimates() -> None:
    """The hot path skips the EWMA update unless the policy in force learns from latencies."""
    store = Store.from_url("redis://127.0.0.1:1/0", "never-connected")
    balancer = StoreBalancer(Config(), store, Replica(store, "proxy", ttl=5, heartbeat=1))
    backends = {"a:1": BackendView(backend=Backend(address="a:1"), health=Health(status="up"))}
    u = Upstream.from_address("a:1")
    names: tuple[Algorithm, ...] = ("least_connections", "ewma")
    for version, name in enumerate(names, start=1):
        balancer.apply(
            Snapshot(version=version, backends=backends, algorithm=AlgorithmSetting(name=name, updated_at=1.0))
        )
        balancer.rebuild()
        balancer.started(u)
        balancer.finished(u, True, 0.02)
        assert (name, "a:1" in balancer.env.latency) == (name, name == "ewma")
    assert balancer.replica.local == {"a:1": 0}  # (zero entries are pruned when the replica pushes)


async def test_with_the_real_clock_a_timer_brings_time_based_changes_to_the_fast_pick_path() -> None:
    """On a loop with the real clock, pick() reads no clock: the loop's timer for the next
    time-based change (here the slow-start steps of a recovered backend) marks the policy stale."""
    config = Config()
    config.balancing.slow_start_sec = 0.3  # type: ignore[assignment]
    store = Store.from_url("redis://127.0.0.1:1/0", "never-connected")
    balancer = StoreBalancer(config, store, Replica(store, "proxy", ttl=5.0, heartbeat=1.0, replica_id="r1"))
    up = Health(status="up")
    backends = {a: BackendView(backend=Backend(address=a), health=up) for a in ADDRS}
    balancer.apply(Snapshot(version=1, backends=backends, algorithm=AlgorithmSetting(name="weighted", updated_at=1.0)))
    balancer.rebuild()
    balancer.apply(Event(version=2, kind="health", address=ADDRS[1], health=Health(status="down")))
    balancer.rebuild()
    balancer.apply(Event(version=3, kind="health", address=ADDRS[1], health=up))
    balancer.rebuild()
    factors = {c.address: c.factor for c in balancer.policy.candidates}
    assert factors[ADDRS[1]] < 1.0 and not balancer._slow  # ramping, and picks take the fast path

    def ramped() -> bool:
        upstream = balancer.pick("k")  # (the fast path: it would rebuild if the timer marked a change due)
        assert upstream is not None
        balancer.finished(upstream, True)
        return all(c.factor == 1.0 for c in balancer.policy.candidates)

    await eventually(ramped, timeout=3, message="the ramp ends without any event")
