"""The scheduler against real HTTP backends and a real Redis: transitions, thresholds, timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from services.health import metrics
from services.health.scheduler import LeaseLost
from shared.aio import cancel_and_wait
from shared.models import Backend, Ejection, now
from shared.redis_server import RedisServer
from shared.store import Store
from tests.helpers import eventually
from tests.integration.health.conftest import Recorder

Fixture = Callable[..., Any]


async def test_die_hang_500_close_and_recover_each_write_exactly_one_transition(
    store: Store, recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    (b,) = await backends(1)
    addr = b.address
    before = {to: metrics.TRANSITIONS.labels(addr, to)._value.get() for to in ("up", "down")}

    def transitions() -> dict[str, float]:
        return {to: metrics.TRANSITIONS.labels(addr, to)._value.get() - before[to] for to in before}

    await start_scheduler(type="http", interval_sec=0.05, rise=2, fall=2, jitter=0.2, timeout_sec=0.2)
    await recorder.wait_for(addr, "up")

    steps: list[tuple[Any, str, str]] = [
        (lambda: b.set_mode("error"), "down", "HTTP 500"),
        (lambda: b.set_mode("ok"), "up", "HTTP 200"),
        (lambda: b.set_mode("hang"), "down", "timeout after 0.2s"),
        (lambda: b.set_mode("ok"), "up", "HTTP 200"),
        (b.die, "down", "connection refused"),
        (b.revive, "up", "HTTP 200"),
        (lambda: b.set_mode("close"), "down", "connection"),
        (lambda: b.set_mode("ok"), "up", "HTTP 200"),
    ]
    for i, (act, status, reason) in enumerate(steps):
        result = act()
        if asyncio.iscoroutine(result):
            await result
        await recorder.wait_for(addr, status, count=1 + (i + 2) // 2 if status == "up" else (i + 2) // 2)
        _, _, written_reason = recorder.last(addr) or ("", 0.0, "")
        assert reason in written_reason, (status, written_reason)
        view = await store.get_backend(addr)
        assert view is not None and view.health.status == status

    # Stable afterwards: a few more intervals add nothing.
    await eventually(lambda: len(b.requests) >= 40, timeout=5)
    expected = ["up", "down"] * 4 + ["up"]
    assert recorder.statuses(addr) == expected
    assert transitions() == {"up": 5.0, "down": 4.0}


async def test_rise_and_fall_thresholds(recorder: Recorder, start_scheduler: Fixture, backends: Fixture) -> None:
    (b,) = await backends(1)
    await start_scheduler(type="http", interval_sec=0.03, rise=3, fall=4, jitter=0.0)
    await recorder.wait_for(b.address, "up")  # from unknown: the first pass decides

    before = len(b.requests)
    b.set_mode("error")
    await recorder.wait_for(b.address, "down")
    failed = len(b.requests) - before
    assert 4 <= failed <= 6  # fall failing probes (and any that ran before the event reached us)

    before = len(b.requests)
    b.set_mode("ok")
    await recorder.wait_for(b.address, "up", count=2)
    passed = len(b.requests) - before
    assert 3 <= passed <= 5
    assert recorder.statuses(b.address) == ["up", "down", "up"]


async def test_no_flapping_with_jitter(recorder: Recorder, start_scheduler: Fixture, backends: Fixture) -> None:
    """Alternating 200/500 never gives fall=2 consecutive failures; heavy jitter changes nothing."""
    flaky, steady = await backends(2)
    flaky.set_mode("alternate")
    scheduler = await start_scheduler(type="http", interval_sec=0.03, rise=2, fall=2, jitter=0.9)
    await eventually(lambda: len(flaky.requests) >= 60 and len(steady.requests) >= 60, timeout=10)
    assert recorder.statuses(flaky.address) == ["up"]
    assert recorder.statuses(steady.address) == ["up"]
    assert all(t.state.status == "up" for t in scheduler.targets.values())


async def test_time_from_death_to_down_is_at_most_fall_intervals_plus_100ms(
    recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    interval, fall = 0.1, 3
    bound = fall * interval + 0.1
    group = await backends(3)
    await start_scheduler(type="http", interval_sec=interval, rise=1, fall=fall, jitter=0.2)
    for b in group:
        await recorder.wait_for(b.address, "up")
    delays: list[float] = []
    for round_ in range(2):
        for b in group:
            died = time.monotonic()
            await b.die()
            down_at = await recorder.wait_for(b.address, "down", count=round_ + 1)
            delays.append(down_at - died)
            await b.revive()
            await recorder.wait_for(b.address, "up", count=round_ + 2)
    assert max(delays) <= bound, f"death-to-down delays {[round(d, 3) for d in delays]} exceed {bound:.3f}s"


async def test_probes_never_clear_a_passive_ejection(
    store: Store, recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    """Passing probes (up -> up, and down -> up) leave a passive ejection in force until its own end."""
    good, bad = await backends(2)
    bad.set_mode("error")
    await start_scheduler(type="http", interval_sec=0.05, rise=2, fall=2)
    await recorder.wait_for(good.address, "up")
    await recorder.wait_for(bad.address, "down")
    for b in (good, bad):
        await store.set_ejection(b.address, Ejection(replica="proxy-1", until=now() + 60, reason="5 errors"))
    bad.set_mode("ok")
    await recorder.wait_for(bad.address, "up")
    await eventually(lambda: len(good.requests) >= 20, timeout=3)
    for b in (good, bad):
        view = await store.get_backend(b.address)
        assert view is not None and view.ejected() and view.health.status == "up"
    assert recorder.statuses(good.address) == ["up"]


async def test_backends_added_and_removed_start_and_stop_probing(
    store: Store, recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    scheduler = await start_scheduler(type="http", interval_sec=0.05)
    assert scheduler.targets == {}
    (b,) = await backends(1)  # added while running
    await recorder.wait_for(b.address, "up")
    await store.remove_backend(b.address)
    await eventually(lambda: b.address not in scheduler.targets, timeout=2)
    await asyncio.sleep(0.02)  # let a probe that was in flight at the removal finish
    served = len(b.requests)
    await asyncio.sleep(0.3)  # six intervals: a probe would show up as a request
    assert len(b.requests) == served
    # Re-adding the address starts over from unknown (removal deleted its health).
    await store.create_backend(Backend(address=b.address))
    await recorder.wait_for(b.address, "up", count=2)


async def test_probing_resumes_from_the_stored_status(
    store: Store, recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    """What makes a takeover flap-free: a stored status is kept until rise/fall probes say otherwise."""
    was_up, was_down = await backends(2)
    await store.set_health(was_up.address, "up")
    await store.set_health(was_down.address, "down")
    was_up.set_mode("error")  # failing now, but stored as up: needs fall=3 failures, not one
    await recorder.wait_for(was_down.address, "down")
    recorder.events.clear()
    await start_scheduler(type="http", interval_sec=0.03, rise=3, fall=3, jitter=0.0)
    await recorder.wait_for(was_up.address, "down")
    await recorder.wait_for(was_down.address, "up")
    assert len(was_up.requests) >= 3
    assert len(was_down.requests) >= 3
    assert recorder.statuses(was_up.address) == ["down"]
    assert recorder.statuses(was_down.address) == ["up"]


async def test_hung_backends_do_not_delay_the_others(
    recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    hung = await backends(5, mode="hang")
    healthy = await backends(5)
    interval = 0.05
    scheduler = await start_scheduler(type="http", interval_sec=interval, timeout_sec=1.0, concurrency=8, jitter=0.1)
    for b in hung:
        await recorder.wait_for(b.address, "down", timeout=3)
    targets = [scheduler.targets[b.address] for b in healthy]
    assert all(t.probes >= 15 for t in targets)  # ~1 s of probing at 50 ms
    # A hung backend holds a slot for the whole 1 s timeout; the others must not wait for it.
    assert max(t.max_gap for t in targets) < 0.5


async def test_a_fenced_write_stops_the_scheduler(store: Store, backends: Fixture) -> None:
    from services.health.scheduler import Scheduler
    from shared.config import HealthCheckConfig

    (b,) = await backends(1)
    old = await store.acquire_lease("health", "replica-a", ttl=10)
    assert old is not None
    await store.release_lease(old)
    new = await store.acquire_lease("health", "replica-b", ttl=10)
    assert new is not None and new.token > old.token
    scheduler = Scheduler(store, HealthCheckConfig(type="http", interval_sec=0.05), fence=old)  # type: ignore[arg-type]
    task = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(task, 3)
        raise AssertionError("the scheduler kept running")
    except LeaseLost:
        pass
    view = await store.get_backend(b.address)
    assert view is not None and view.health.status == "unknown"  # the stale writer changed nothing
    assert scheduler.targets == {}


async def test_a_write_lost_to_a_redis_outage_is_retried_after_redis_returns(
    private_redis: RedisServer, backends: Fixture
) -> None:
    from services.health.scheduler import Scheduler
    from shared.config import HealthCheckConfig

    store = Store.from_url(private_redis.url, "outage")
    (b,) = await backends(1, register=False)
    await store.create_backend(Backend(address=b.address))
    scheduler = Scheduler(store, HealthCheckConfig(type="http", interval_sec=0.05, rise=1, fall=2, timeout_sec=0.3))  # type: ignore[arg-type]
    task = asyncio.create_task(scheduler.run())
    try:

        async def stored() -> str:
            view = await store.get_backend(b.address)
            return view.health.status if view is not None else ""

        await eventually(lambda: _equals(stored, "up"), timeout=5)
        private_redis.stop()
        b.set_mode("error")
        await eventually(lambda: scheduler.targets[b.address].state.status == "down", timeout=3)
        assert scheduler.targets[b.address].written == "up"  # the write could not happen
        private_redis.start()
        await eventually(lambda: _equals(stored, "down"), timeout=10, message="the down verdict was never written")
        assert not task.done()
    finally:
        await cancel_and_wait([task])
        await store.close()


async def _equals(fetch: Callable[[], Any], expected: str) -> bool:
    return bool(await fetch() == expected)
