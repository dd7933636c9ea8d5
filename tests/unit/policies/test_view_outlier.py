"""The local view (snapshots, events, ejection overlay, slow start) and outlier detection."""

from __future__ import annotations

import pytest

from services.proxy.outlier import OutlierDetector
from services.proxy.policies import ramp
from services.proxy.view import LocalView
from shared.config import Config, OutlierConfig, Seconds
from shared.models import AlgorithmSetting, Backend, BackendView, Ejection, Event, Health, Snapshot

UP = Health(status="up")


def snapshot(*addresses: str, version: int = 1, **health: Health) -> Snapshot:
    return Snapshot(
        version=version,
        backends={a: BackendView(backend=Backend(address=a), health=UP) for a in addresses},
        algorithm=AlgorithmSetting(name="round_robin"),
    )


def names(view: LocalView, at: float, slow: float = 0.0) -> list[str]:
    return [c.address for c in view.candidates(at, slow)[0]]


def test_events_update_the_view() -> None:
    view = LocalView()
    view.apply(snapshot("a:1", "b:1"))
    assert names(view, 0) == ["a:1", "b:1"]
    view.apply(Event(version=2, kind="backend_added", address="c:1", backend=Backend(address="c:1", weight=3)))
    assert names(view, 0) == ["a:1", "b:1"]  # unknown health, start_healthy False
    view.apply(Event(version=3, kind="health", address="c:1", health=UP))
    assert [(c.address, c.weight) for c in view.candidates(0, 0)[0]][-1] == ("c:1", 3)
    view.apply(
        Event(version=4, kind="backend_updated", address="a:1", backend=Backend(address="a:1", state="draining"))
    )
    view.apply(Event(version=5, kind="health", address="b:1", health=Health(status="down")))
    assert names(view, 0) == ["c:1"]
    view.apply(Event(version=6, kind="backend_removed", address="c:1"))
    view.apply(Event(version=7, kind="algorithm", algorithm=AlgorithmSetting(name="p2c")))
    assert names(view, 0) == [] and view.algorithm.name == "p2c" and view.version == 7


def test_unknown_health_counts_with_start_healthy() -> None:
    view = LocalView(start_healthy=True)
    view.apply(
        Snapshot(version=1, backends={"a:1": BackendView(backend=Backend(address="a:1"))}, algorithm=AlgorithmSetting())
    )
    assert names(view, 0) == ["a:1"]


def test_ejections_store_and_local_and_their_end() -> None:
    view = LocalView()
    view.apply(snapshot("a:1", "b:1"))
    view.apply(Event(version=2, kind="ejection", address="a:1", ejection=Ejection(replica="r2", until=10.0)))
    view.eject_locally("b:1", Ejection(replica="me", until=20.0))
    candidates, next_change = view.candidates(5.0, 0)
    assert candidates == () and next_change == 10.0
    assert view.ejected_count(5.0) == 2
    assert names(view, 10.0) == ["a:1"]
    assert names(view, 20.0) == ["a:1", "b:1"]
    view.eject_locally("b:1", Ejection(replica="me", until=50.0))
    view.apply(Event(version=3, kind="ejection", address="b:1", ejection=None))  # cleared by the store
    assert names(view, 21.0) == ["a:1", "b:1"]


def test_slow_start_ramps_a_recovered_backend_in_steps() -> None:
    view = LocalView()
    view.apply(snapshot("a:1", "b:1"))
    assert [c.factor for c in view.candidates(0.0, 10.0)[0]] == [1.0, 1.0]  # first view: warm
    view.apply(Event(version=2, kind="health", address="b:1", health=Health(status="down")))
    view.candidates(1.0, 10.0)
    view.apply(Event(version=3, kind="health", address="b:1", health=UP))
    factors = []
    for t in (2.0, 2.5, 3.0, 7.1, 11.9, 12.0):
        candidates, next_change = view.candidates(t, 10.0)
        factors.append(candidates[1].factor)
        if t == 2.0:
            assert next_change == pytest.approx(3.0)
    assert factors == [0.1, 0.1, 0.2, 0.6, 1.0, 1.0]


def test_ramp_function() -> None:
    assert ramp(0.0, 0.0, 0.0) == (1.0, None)
    assert ramp(0.0, 0.0, 10.0) == (0.1, 1.0)
    assert ramp(0.0, 9.99, 10.0) == (1.0, None)


def test_static_start_assumes_config_backends_are_up() -> None:
    from shared.config import BackendConfig

    view = LocalView()
    view.load_static(Config(algorithm="ip_hash", backends=[BackendConfig(address="127.0.0.1:9001", weight=2)]))
    assert [(c.address, c.weight) for c in view.candidates(0, 0)[0]] == [("127.0.0.1:9001", 2)]
    assert view.algorithm.name == "ip_hash"


def outlier() -> OutlierDetector:
    cfg = OutlierConfig(
        consecutive_failures=3, base_ejection_sec=Seconds(10.0), max_ejection_sec=Seconds(25.0), max_ejection_percent=50
    )
    return OutlierDetector(cfg, "me")


def test_consecutive_failures_eject_with_growing_capped_interval() -> None:
    d = outlier()
    assert d.record("a", False, 0.0, pool_size=4, ejected=0) is None
    assert d.record("a", True, 0.0, pool_size=4, ejected=0) is None  # a success resets the streak
    assert d.record("a", False, 0.0, pool_size=4, ejected=0) is None
    assert d.record("a", False, 0.0, pool_size=4, ejected=0) is None
    first = d.record("a", False, 1.0, pool_size=4, ejected=0)
    assert first is not None and first.until == 11.0 and first.count == 1 and first.replica == "me"
    assert d.record("a", False, 5.0, pool_size=4, ejected=0, current=first) is None  # already out: no extension
    for _ in range(2):
        assert d.record("a", False, 12.0, pool_size=4, ejected=0) is None
    second = d.record("a", False, 12.0, pool_size=4, ejected=0)
    assert second is not None and second.until == 32.0 and second.count == 2
    for _ in range(2):
        d.record("a", False, 40.0, pool_size=4, ejected=0)
    third = d.record("a", False, 40.0, pool_size=4, ejected=0)
    assert third is not None and third.until == 65.0 and third.count == 3  # capped at 25 s
    for _ in range(2):
        d.record("a", False, 200.0, pool_size=4, ejected=0)
    again = d.record("a", False, 200.0, pool_size=4, ejected=0)  # long in service since: the count starts over
    assert again is not None and again.count == 1


def test_never_more_than_max_ejection_percent() -> None:
    d = outlier()
    for _ in range(3):
        result = d.record("a", False, 0.0, pool_size=4, ejected=2)
    assert result is None and d.refused == 1
    for _ in range(3):
        result = d.record("b", False, 0.0, pool_size=4, ejected=1)
    assert result is not None


def test_another_replicas_ejection_history_counts() -> None:
    d = outlier()
    remote = Ejection(replica="r2", until=10.0, count=2)
    for _ in range(3):
        result = d.record("a", False, 12.0, pool_size=4, ejected=0, current=remote)
    assert result is not None and result.count == 3 and result.until == 12.0 + 25.0
