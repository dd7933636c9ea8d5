"""The admin's snapshot without I/O: the encoded list, its cache and ETag, pages, ejection ends, and the
in-process fan-out of events to streams (overflow -> a fresh snapshot)."""

from __future__ import annotations

import json

from services.admin.listing import Listing, Query
from services.admin.snapshot import AdminSnapshot
from shared.mirror import Mirror
from shared.models import AlgorithmSetting, Backend, BackendView, Ejection, Event, Health, HealthStatus, Snapshot


def snap(version: int, *addresses: str, **views: BackendView) -> Snapshot:
    backends = {a: BackendView(backend=Backend(address=a)) for a in addresses}
    backends.update({v.address: v for v in views.values()})
    return Snapshot(version=version, backends=backends, algorithm=AlgorithmSetting())


def test_the_list_is_encoded_once_per_change_and_the_etag_moves_with_it() -> None:
    mirror = Mirror()
    mirror.apply(snap(1, "b:1", "a:1"))
    listing = Listing(mirror, start_healthy=False)
    first = listing.page(Query(), 100.0)
    assert [b["address"] for b in json.loads(first.body)] == ["a:1", "b:1"]
    etag = listing.etag
    assert listing.page(Query(), 100.0).body is first.body  # cached: no work for an unchanged read
    mirror.apply(Event(version=2, kind="health", address="a:1", health=Health(status="up")))
    listing.touched()
    assert listing.etag != etag
    again = json.loads(listing.page(Query(), 100.0).body)
    assert again[0]["health"] == "up" and again[1]["health"] == "unknown"
    assert listing.set_inflight({"b:1": 3}) and not listing.set_inflight({"b:1": 3})
    assert json.loads(listing.page(Query(), 100.0).body)[1]["conn_count"] == 3


def test_an_ejection_that_ends_changes_alive_and_ejected_without_an_event() -> None:
    mirror = Mirror()
    ejected = BackendView(
        backend=Backend(address="a:1"), health=Health(status="up"), ejection=Ejection(replica="p", until=110.0)
    )
    mirror.apply(snap(1, a=ejected))
    listing = Listing(mirror, start_healthy=False)
    [during] = json.loads(listing.page(Query(), 100.0).body)
    etag = listing.etag
    assert (during["alive"], during["ejected"]) == (False, True)
    assert listing.page(Query(), 109.9).body  # still the same answer
    assert listing.etag == etag
    listing.expire(110.0)
    [after] = json.loads(listing.page(Query(), 110.0).body)
    assert (after["alive"], after["ejected"], after["ejected_until"]) == (True, False, None)
    assert listing.etag != etag


def test_pages_start_after_the_cursor_and_filters_apply() -> None:
    mirror = Mirror()
    mirror.apply(snap(1, *(f"10.0.0.{i}:80" for i in range(10))))
    listing = Listing(mirror, start_healthy=False)
    page = listing.page(Query(limit=4), 1.0)
    assert page.next_cursor == "10.0.0.3:80"
    rest = listing.page(Query(limit=4, cursor="10.0.0.3:80"), 1.0)
    assert [b["address"] for b in json.loads(rest.body)] == [f"10.0.0.{i}:80" for i in range(4, 8)]
    last = listing.page(Query(limit=4, cursor="10.0.0.7:80"), 1.0)
    assert len(json.loads(last.body)) == 2 and last.next_cursor is None
    # A cursor that is no backend (removed since) still works: pages are ranges of addresses (string order).
    assert json.loads(listing.page(Query(limit=1, cursor="10.0.0.35:80"), 1.0).body)[0]["address"] == "10.0.0.3:80"
    assert json.loads(listing.page(Query(health="up"), 1.0).body) == []


def test_streams_get_a_snapshot_then_events_and_a_fresh_snapshot_after_falling_behind() -> None:
    snapshot = AdminSnapshot(start_healthy=False, max_streams=2, stream_queue=3)
    fast, slow = snapshot.subscribe(), snapshot.subscribe()
    assert snapshot.next_message(fast) is None  # nothing until the first Snapshot
    snapshot.apply(snap(5, "a:1"))
    first = snapshot.next_message(fast)
    assert first is not None and first.startswith(b"id: 5\nevent: snapshot\ndata: ")
    assert json.loads(first.split(b"data: ", 1)[1])["backends"][0]["address"] == "a:1"
    for version in range(6, 11):  # 5 events: more than slow's queue holds
        snapshot.apply(Event(version=version, kind="backend_added", address=f"b:{version}",
                             backend=Backend(address=f"b:{version}")))  # fmt: skip
        message = snapshot.next_message(fast)
        assert message is not None and message.startswith(b"id: %d\nevent: backend_added" % version)
    catch_up = snapshot.next_message(slow)
    assert catch_up is not None and catch_up.startswith(b"id: 10\nevent: snapshot")
    assert len(json.loads(catch_up.split(b"data: ", 1)[1])["backends"]) == 6
    assert snapshot.next_message(slow) is None


def test_the_stream_cap_is_taken_at_subscribe() -> None:
    snapshot = AdminSnapshot(start_healthy=False, max_streams=2)
    a = snapshot.subscribe()
    snapshot.subscribe()
    try:
        snapshot.subscribe()
    except Exception as exc:
        assert "too many open event streams (2)" in str(exc)
    else:
        raise AssertionError("a third stream was accepted")
    snapshot.unsubscribe(a)
    snapshot.subscribe()


def test_per_pool_lists_and_counts_follow_random_changes() -> None:
    """Backends added, removed, moved between pools and changing health, through AdminSnapshot.apply: each
    pool's list (and GET /pools's counts) is what filtering the whole state would give, at every step."""
    import random

    rng = random.Random(7)
    snapshot = AdminSnapshot(start_healthy=False)
    snapshot.apply(snap(1, *(f"10.0.0.{i}:80" for i in range(20))))
    listing, mirror = snapshot.listing, snapshot.mirror
    pools = ["default", "api", "web"]
    for version in range(2, 400):
        address = f"10.0.0.{rng.randrange(30)}:80"
        view = mirror.backends.get(address)
        roll = rng.random()
        if view is None:
            event = Event(version=version, kind="backend_added", address=address,
                          backend=Backend(address=address, pool=rng.choice(pools)))  # fmt: skip
        elif roll < 0.2:
            event = Event(version=version, kind="backend_removed", address=address, backend=view.backend)
        elif roll < 0.6:
            moved = Backend(address=address, pool=rng.choice(pools), state=view.backend.state)
            event = Event(version=version, kind="backend_updated", address=address, backend=moved)
        else:
            status: HealthStatus = rng.choice(["up", "down"])
            event = Event(version=version, kind="health", address=address, health=Health(status=status))
        snapshot.apply(event)
        if version % 7 == 0 or version > 390:
            for pool in pools:
                expected = sorted(a for a, v in mirror.backends.items() if v.backend.pool == pool)
                got = [b["address"] for b in json.loads(listing.page(Query(pool=pool), 1.0).body)]
                assert got == expected, (version, pool)
                assert listing.pool_order(pool) == expected
            counts = listing.pool_counts(1.0)
            for pool in pools:
                views = [v for v in mirror.backends.values() if v.backend.pool == pool]
                usable = sum(v.usable(at=1.0) for v in views)
                assert counts.get(pool, (0, 0)) == (len(views), usable), (version, pool)
    assert [b["address"] for b in json.loads(listing.page(Query(), 1.0).body)] == sorted(mirror.backends)
