"""A store that comes back empty (or older) after losing its data: the view bridges the refill."""

from services.proxy.view import LocalView
from shared.models import AlgorithmSetting, Backend, BackendView, Event, Health, Snapshot

UP = Health(status="up")


def snap(version: int, **backends: Health) -> Snapshot:
    return Snapshot(
        version=version,
        backends={a: BackendView(backend=Backend(address=a), health=h) for a, h in backends.items()},
        algorithm=AlgorithmSetting(),
    )


def usable(view: LocalView, at: float) -> list[str]:
    return sorted(a for a, v in view.backends.items() if view.usable(v, at))


def test_a_reset_keeps_what_was_up_until_the_store_refills() -> None:
    view = LocalView(reset_grace=30)
    view.apply(snap(40, **{"a:1": UP, "b:1": UP, "c:1": Health(status="down")}), at=0)
    view.apply(snap(0), at=1)  # Redis restarted empty
    assert view.resets == 1
    assert usable(view, 1) == ["a:1", "b:1"]  # not an empty pool
    # discovery re-adds a:1 (health unknown in the store): it keeps its last health
    view.apply(Event(version=1, kind="backend_added", address="a:1", backend=Backend(address="a:1")), at=2)
    assert usable(view, 2) == ["a:1", "b:1"]
    # the health checker's verdict wins over what was carried
    view.apply(Event(version=2, kind="health", address="a:1", health=Health(status="down")), at=3)
    assert usable(view, 3) == ["b:1"]
    # grace over: b:1 never came back to the store, so it goes
    assert view.end_carry(31) is True
    assert "b:1" not in view.backends and usable(view, 31) == []


def test_carried_health_is_forgotten_when_never_confirmed() -> None:
    view = LocalView(reset_grace=10)
    view.apply(snap(7, **{"a:1": UP}), at=0)
    view.apply(snap(1, **{"a:1": Health()}), at=1)
    assert usable(view, 1) == ["a:1"]
    assert view.end_carry(5) is False  # still within the grace
    assert view.end_carry(11) is True
    assert view.backends["a:1"].health.status == "unknown" and usable(view, 11) == []


def test_a_normal_snapshot_is_the_truth() -> None:
    view = LocalView()
    view.apply(snap(5, **{"a:1": UP, "b:1": UP}), at=0)
    view.apply(snap(9, **{"a:1": UP}), at=1)  # a newer snapshot: b:1 was removed for real
    assert view.resets == 0 and sorted(view.backends) == ["a:1"]


def test_a_removal_during_the_grace_is_honoured() -> None:
    view = LocalView(reset_grace=30)
    view.apply(snap(5, **{"a:1": UP}), at=0)
    view.apply(snap(0, **{"a:1": Health()}), at=1)
    view.apply(Event(version=1, kind="backend_removed", address="a:1", backend=Backend(address="a:1")), at=2)
    assert "a:1" not in view.backends
    view.apply(snap(1), at=3)  # a re-sync within the grace does not bring it back
    assert "a:1" not in view.backends
