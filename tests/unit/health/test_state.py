"""The probe state machine and the jitter schedule, exhaustively (no I/O)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.health.state import ProbeState, Schedule
from shared.models import HealthStatus

STATUSES: tuple[HealthStatus, ...] = ("unknown", "up", "down")


def reference(rise: int, fall: int, start: HealthStatus, results: list[bool]) -> list[HealthStatus]:
    """An independent statement of the rules: the status after each probe.

    From unknown the first verdict decides; afterwards a status flips only after ``fall`` consecutive
    fails (up) or ``rise`` consecutive passes (down), counted since the last flip.
    """
    status = start
    history: list[bool] = []  # results since the last flip
    out: list[HealthStatus] = []
    for ok in results:
        history.append(ok)
        if status == "unknown":
            status = "up" if ok else "down"
            history = []
        elif status == "up" and len(history) >= fall and not any(history[-fall:]):
            status, history = "down", []
        elif status == "down" and len(history) >= rise and all(history[-rise:]):
            status, history = "up", []
        out.append(status)
    return out


@pytest.mark.parametrize("rise", [1, 2, 3])
@pytest.mark.parametrize("fall", [1, 2, 3])
@pytest.mark.parametrize("start", STATUSES)
def test_every_sequence_up_to_eight_probes_matches_the_reference(rise: int, fall: int, start: HealthStatus) -> None:
    for length in range(1, 9):
        for results in itertools.product((True, False), repeat=length):
            state = ProbeState(rise, fall, start)
            statuses: list[HealthStatus] = []
            changes = 0
            before = start
            for ok in results:
                changed = state.observe(ok)
                if changed is not None:
                    assert changed != before, "a reported change must change the status"
                    changes += 1
                assert changed is None or changed == state.status
                before = state.status
                statuses.append(state.status)
            assert statuses == reference(rise, fall, start, list(results)), (rise, fall, start, results)
            flips = sum(1 for a, b in itertools.pairwise([start, *statuses]) if a != b)
            assert changes == flips  # observe() reports each transition exactly once


@given(
    rise=st.integers(1, 6),
    fall=st.integers(1, 6),
    start=st.sampled_from(STATUSES),
    results=st.lists(st.booleans(), max_size=60),
)
def test_random_sequences_match_the_reference(rise: int, fall: int, start: HealthStatus, results: list[bool]) -> None:
    state = ProbeState(rise, fall, start)
    assert [state.observe(ok) or state.status for ok in results] == reference(rise, fall, start, results)


def test_first_verdict_decides_from_unknown() -> None:
    state = ProbeState(rise=5, fall=5)
    assert state.observe(True) == "up"
    state = ProbeState(rise=5, fall=5)
    assert state.observe(False) == "down"


def test_fall_consecutive_failures_take_an_up_backend_down_exactly_at_the_threshold() -> None:
    state = ProbeState(rise=2, fall=3, status="up")
    assert [state.observe(False) for _ in range(3)] == [None, None, "down"]
    assert state.observe(False) is None  # already down: no second transition


def test_rise_consecutive_passes_bring_a_down_backend_up_exactly_at_the_threshold() -> None:
    state = ProbeState(rise=2, fall=3, status="down")
    assert [state.observe(True) for _ in range(2)] == [None, "up"]
    assert state.observe(True) is None


def test_alternating_results_never_flap_once_decided() -> None:
    for start in ("up", "down"):
        state = ProbeState(rise=2, fall=2, status=start)
        assert all(state.observe(i % 2 == 0) is None for i in range(1000))
        assert state.status == start


def test_a_pass_resets_the_fail_count_and_vice_versa() -> None:
    state = ProbeState(rise=2, fall=3, status="up")
    for ok in (False, False, True, False, False):
        assert state.observe(ok) is None
    assert state.observe(False) == "down"
    for ok in (True, False, True):
        assert state.observe(ok) is None
    assert state.observe(True) == "up"


def test_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ProbeState(0, 1)
    with pytest.raises(ValueError):
        ProbeState(1, 0)


# -- schedule ------------------------------------------------------------------------------------


@given(
    interval=st.floats(0.01, 60.0),
    jitter=st.floats(0.0, 1.0),
    r=st.floats(0.0, 1.0, exclude_max=True),
)
def test_jitter_only_shortens_intervals(interval: float, jitter: float, r: float) -> None:
    s = Schedule(interval, jitter)
    assert interval * (1 - jitter) - 1e-9 <= s.next_delay(r) <= interval
    assert 0.0 <= s.first_delay(r) <= interval * jitter


def test_no_jitter_means_a_fixed_period() -> None:
    s = Schedule(2.0, 0.0)
    assert {s.next_delay(r) for r in (0.0, 0.3, 0.999)} == {2.0}
    assert s.first_delay(0.7) == 0.0


def test_fall_probes_after_a_death_complete_within_fall_intervals() -> None:
    """The detection bound the service promises: whenever a backend dies, the fall-th probe after
    the death starts at most fall * interval later (probe duration comes on top)."""
    rng = random.Random(7)
    interval, fall = 2.0, 3
    s = Schedule(interval, 0.5)
    for _ in range(2000):
        starts = [s.first_delay(rng.random())]
        while starts[-1] < 40.0:
            starts.append(s.next_start(starts[-1], starts[-1] + 0.001, rng.random()))
        death = rng.uniform(0.0, 30.0)
        after = [t for t in starts if t > death]
        assert after[fall - 1] - death <= fall * interval + 1e-9


def test_next_start_is_anchored_to_the_due_time_and_never_bursts() -> None:
    s = Schedule(1.0, 0.0)
    # The timer fired 30 ms late and the probe took 10 ms: the next start stays on the grid.
    assert s.next_start(5.0, 5.04, 0.5) == 6.0
    # The probe overran its slot (hung until a 2.5 s timeout): go again at once, not 3 times.
    assert s.next_start(5.0, 7.5, 0.5) == 7.5


def test_schedule_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        Schedule(0.0)
    with pytest.raises(ValueError):
        Schedule(1.0, 1.5)


def test_jitter_spreads_first_probes() -> None:
    rng = random.Random(1)
    s = Schedule(2.0, 0.1)
    firsts = [s.first_delay(rng.random()) for _ in range(1000)]
    # Spread over the whole jitter window, not bunched at one instant.
    buckets = {int(f / 0.02) for f in firsts}
    assert len(buckets) == 10
