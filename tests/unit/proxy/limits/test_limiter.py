"""The limiter's arithmetic: against a plain sliding-window reference, its Retry-After, its replicas'
accuracy through a simulated Redis, the fallback while Redis is away, and its memory bound."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from services.proxy.limits.limiter import Limiter
from tests.unit.proxy.limits.sim import simulate


@dataclass
class Reference:
    """A sliding-window counter, one replica, written the obvious way: per key, own counts per window;
    admit while prev * (1 - elapsed fraction) + current < quota."""

    quota: int
    window: float
    counts: dict[tuple[str, int], int] = field(default_factory=dict)

    def admit(self, key: str, now: float) -> bool:
        win = math.floor(now / self.window)
        elapsed = now / self.window - win
        estimate = self.counts.get((key, win - 1), 0) * (1.0 - elapsed) + self.counts.get((key, win), 0)
        if estimate < self.quota:
            self.counts[(key, win)] = self.counts.get((key, win), 0) + 1
            return True
        return False


# Times on a 1/64 s grid and power-of-two windows: both sides compute exactly, no rounding ties.
steps = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(min_value=0, max_value=40)), min_size=1, max_size=300
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    limit=st.integers(min_value=1, max_value=20),
    burst=st.integers(min_value=0, max_value=5),
    window=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
)
def test_one_replica_decides_as_the_reference(
    steps: list[tuple[str, int]], limit: int, burst: int, window: float
) -> None:
    lim = Limiter("r", limit, window, burst=burst)
    ref = Reference(limit + burst, window)
    now = 1000.0
    for key, gap in steps:
        now += gap / 64
        assert (lim.admit(key, now) == 0) == ref.admit(key, now), (key, now)


@settings(max_examples=300, deadline=None)
@given(steps=steps, limit=st.integers(min_value=1, max_value=20), window=st.sampled_from([1.0, 2.0, 60.0]))
def test_retry_after_is_when_the_key_is_admitted_again(steps: list[tuple[str, int]], limit: int, window: float) -> None:
    lim = Limiter("r", limit, window)
    now = 1000.0
    for key, gap in steps:
        now += gap / 64
        retry = lim.admit(key, now)
        if retry:
            assert retry >= 1
            # Nothing else comes meanwhile: at now + retry the key is admitted.
            assert lim.admit(key, now + retry) == 0, (key, now, retry)
            now += retry


def warm(admitted: dict[int, int]) -> list[int]:
    """The windows once warm: the first two (cold start) and the last (cut short) left out."""
    return sorted(admitted)[2:-1]


def test_three_replicas_each_offered_three_times_the_limit_admit_the_limit() -> None:
    for limit, window, seconds in [(1000, 1.0, 12.0), (200, 1.0, 12.0), (6000, 60.0, 420.0)]:
        run = simulate(3, limit, window, [3 * limit / window] * 3, seconds)
        for win in warm(run.admitted):
            assert 0.95 * limit <= run.admitted[win] <= 1.05 * limit, (limit, window, win, run.admitted)


def test_late_syncs_and_slow_round_trips_do_not_let_replicas_take_the_same_slack() -> None:
    # Syncs up to one interval late, round trips up to 50 ms: replicas deciding on a stale view of what is
    # left would each take it (10-20 % over per window); grants are counted in Redis as they are given.
    for seed in (1, 2, 3):
        run = simulate(3, 200, 1.0, [600.0] * 3, 12.0, jitter=1.0, slow_rtt=0.05, seed=seed)
        for win in warm(run.admitted):
            assert 0.95 * 200 <= run.admitted[win] <= 200, (seed, win, run.admitted)


def test_under_the_limit_few_requests_are_refused() -> None:
    run = simulate(3, 100, 1.0, [50 / 3] * 3, 120.0)
    windows = warm(run.admitted)
    offered = 50 * len(windows)
    assert sum(run.admitted[w] for w in windows) >= 0.97 * offered


def test_a_replica_alone_admits_the_full_limit() -> None:
    for limit, window in [(1000, 1.0), (100, 1.0), (6000, 60.0)]:
        run = simulate(1, limit, window, [3 * limit / window], 12.0 * window)
        for win in warm(run.admitted):
            # (a sliding window moves a request across a fixed window's boundary now and then)
            assert abs(run.admitted[win] - limit) <= max(1, limit // 100), (limit, win, run.admitted)
    # A small limit with random arrivals: a window's last free slots may see no request (as with one counter).
    run = simulate(1, 10, 1.0, [30.0], 60.0)
    windows = warm(run.admitted)
    assert sum(run.admitted[w] for w in windows) >= 0.95 * 10 * len(windows)
    assert max(run.admitted[w] for w in windows) == 10


def test_a_replica_with_all_the_traffic_admits_the_limit_among_three() -> None:
    run = simulate(3, 1000, 1.0, [3000.0, 0.0, 0.0], 12.0)
    for win in warm(run.admitted):
        assert 0.97 * 1000 <= run.admitted[win] <= 1000, run.admitted


def test_uneven_traffic_stays_within_the_limit() -> None:
    run = simulate(3, 1000, 1.0, [6000.0, 300.0, 300.0], 12.0)
    for win in warm(run.admitted):
        assert 0.95 * 1000 <= run.admitted[win] <= 1.05 * 1000, run.admitted


def test_without_redis_each_replica_admits_its_share_and_recovery_bursts_nothing() -> None:
    limit = 1000
    run = simulate(3, limit, 1.0, [3.0 * limit] * 3, 24.0, outage=(8.0, 16.0))
    for win in warm(run.admitted):
        assert run.admitted[win] <= 1.05 * limit, (win, run.admitted)
    for win in range(9, 16):  # away: about a third each
        assert 0.9 * limit <= run.admitted[win] <= 1.05 * limit, (win, run.admitted)
        for per in run.per_replica:
            assert per[win] <= 1.05 * limit / 3, (win, run.per_replica)


def test_fail_closed_refuses_everything_while_redis_is_away() -> None:
    lim = Limiter("r", 100, 1.0, fail_closed=True)
    assert lim.admit("k", 10.0) == 0
    lim.fail_sync(lim.begin_sync())
    assert lim.admit("k", 10.1) >= 1
    assert lim.admit("new", 10.2) >= 1
    batch = lim.begin_sync()
    lim.complete_sync(batch, [(0, 1, 10, 89, 0)] * len(batch.items), 1, 10.3)
    assert lim.admit("k", 10.4) == 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_million_distinct_keys_keep_the_state_under_the_bound() -> None:
    max_keys = 20_000
    lim = Limiter("r", 10, 1.0, max_keys=max_keys)
    before = _rss()
    now = 1000.0
    for i in range(1_000_000):
        now += 0.000_01
        assert lim.admit(f"{i}", now) == 0
        if i % 5000 == 4999:  # a sync every 50 ms of this traffic, as the sync task would
            batch = lim.begin_sync()
            lim.complete_sync(batch, [(0, item.over, item.want, 0, 0) for item in batch.items], 1, now)
            del batch
    grown = _rss() - before
    assert len(lim) <= max_keys
    assert lim.pending() <= max_keys
    # About 500 bytes a key (entry, its floats, the key string, the dict slots); without the bound a
    # million keys would take 500 MB.
    assert grown < max_keys * 1000 + 16 * 2**20, f"RSS grew {grown} bytes for at most {max_keys} keys"


def test_long_keys_are_kept_as_digests() -> None:
    lim = Limiter("r", 2, 1.0)
    key = "x" * 10_000
    assert lim.admit(key, 1.0) == 0
    assert lim.admit(key, 1.1) == 0
    assert lim.admit(key, 1.2) >= 1
    assert all(len(e.key) < 64 for e in lim._young.values())
