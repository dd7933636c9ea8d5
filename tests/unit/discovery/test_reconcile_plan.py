"""The reconciler's diff: pure, no Redis."""

from __future__ import annotations

from services.discovery.desired import Desired
from services.discovery.reconcile import plan
from shared.models import Backend


def b(address: str, weight: int = 1, origin: str = "static", state: str = "enabled") -> Backend:
    return Backend(address=address, weight=weight, origin=origin, state=state)  # type: ignore[arg-type]


def test_adds_missing_and_removes_unwanted_of_its_origin_only() -> None:
    desired = {"10.0.0.1:80": b("10.0.0.1:80"), "10.0.0.2:80": b("10.0.0.2:80")}
    current = {
        "10.0.0.1:80": b("10.0.0.1:80"),
        "10.0.0.3:80": b("10.0.0.3:80"),  # ours, no longer wanted
        "10.0.0.4:80": b("10.0.0.4:80", origin="api"),  # an operator's: never touched
        "10.0.0.5:80": b("10.0.0.5:80", origin="docker"),  # another source's: never touched
    }
    p = plan(desired, current, "static")
    assert [x.address for x in p.upserts] == ["10.0.0.2:80"]
    assert p.removals == ["10.0.0.3:80"]
    assert p.conflicts == []


def test_equal_sets_plan_nothing() -> None:
    desired = {"a:1": b("a:1", weight=3)}
    assert not plan(desired, {"a:1": b("a:1", weight=3)}, "static")


def test_weight_change_is_an_upsert() -> None:
    p = plan({"a:1": b("a:1", weight=5)}, {"a:1": b("a:1", weight=1)}, "static")
    assert [(x.address, x.weight) for x in p.upserts] == [("a:1", 5)]


def test_unmanaged_state_is_left_to_the_operator() -> None:
    # A static backend drained through the API stays drained: static manages only the weight.
    current = {"a:1": b("a:1", state="draining")}
    assert not plan({"a:1": b("a:1")}, current, "static", ("weight",))
    # Kubernetes manages readiness: its state is reconciled.
    current_k = {"a:1": b("a:1", origin="kubernetes", state="enabled")}
    p = plan({"a:1": b("a:1", origin="kubernetes", state="draining")}, current_k, "kubernetes", ("weight", "state"))
    assert [(x.address, x.state) for x in p.upserts] == [("a:1", "draining")]


def test_address_held_by_the_api_is_a_conflict_not_a_write() -> None:
    p = plan({"a:1": b("a:1", weight=9)}, {"a:1": b("a:1", origin="api")}, "static")
    assert not p
    assert p.conflicts == ["a:1"]


def test_empty_desired_removes_all_of_its_origin() -> None:
    current = {"a:1": b("a:1", origin="docker"), "b:1": b("b:1", origin="api")}
    assert plan({}, current, "docker").removals == ["a:1"]


def test_desired_publish_bumps_generation_only_on_change() -> None:
    d = Desired()
    assert d.value is None
    assert d.publish({"a:1": b("a:1")})
    assert d.generation == 1
    assert not d.publish({"a:1": b("a:1")})
    assert d.generation == 1
    assert d.publish({"a:1": b("a:1", weight=2)})
    assert d.publish({})
    assert d.generation == 3 and d.value == {}


def test_an_overridden_field_is_compared_with_what_the_source_last_wrote() -> None:
    from shared.models import BackendOverride

    overridden = Backend(
        address="a:1",
        weight=3,
        origin="static",
        override=BackendOverride(weight=3),
        discovered=BackendOverride(weight=1),
    )
    assert not plan({"a:1": b("a:1", weight=1)}, {"a:1": overridden}, "static")  # nothing to write, every time
    changed = plan({"a:1": b("a:1", weight=2)}, {"a:1": overridden}, "static")  # the source changed its mind
    assert [x.weight for x in changed.upserts] == [2]
