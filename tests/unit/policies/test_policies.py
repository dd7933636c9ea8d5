"""Distribution, order and edge cases of every policy (pure: exact clock and seeded randomness)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.proxy.policies import POLICIES, Candidate, MutableCounts, PolicyEnv, build_policy
from services.proxy.policies.least_conn import _CountBuckets
from services.proxy.policies.smooth_weighted import MAX_CLASSES, SmoothStepper, SmoothWeighted, nginx_reference


def env(seed: int = 1) -> PolicyEnv:
    return PolicyEnv(counts=MutableCounts(), rng=random.Random(seed))


def cands(*weights: int) -> list[Candidate]:
    return [Candidate(f"b{i}", w) for i, w in enumerate(weights)]


def shares(picks: list[str | None]) -> dict[str | None, float]:
    counter = Counter(picks)
    return {k: v / len(picks) for k, v in counter.items()}


# -- every policy ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_no_candidates_gives_none(name: str) -> None:
    assert build_policy(name, [], env()).pick("k") is None


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_exclude_is_respected_and_all_excluded_gives_none(name: str) -> None:
    policy = build_policy(name, cands(1, 5, 1), env())
    for i in range(200):
        assert policy.pick(f"10.0.0.{i}", exclude={"b1"}) in {"b0", "b2"}
        assert policy.pick(f"10.0.0.{i}", exclude={"b1", "b2"}) == "b0"
    assert policy.pick("k", exclude={"b0", "b1", "b2"}) is None


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_single_candidate(name: str) -> None:
    policy = build_policy(name, cands(3), env())
    assert {policy.pick(str(i)) for i in range(50)} == {"b0"}


# -- round robin -----------------------------------------------------------------------------


def test_round_robin_rotates_in_order_ignoring_weights() -> None:
    policy = build_policy("round_robin", cands(1, 9, 3), env())
    assert [policy.pick("") for _ in range(7)] == ["b0", "b1", "b2", "b0", "b1", "b2", "b0"]


def test_round_robin_exclude_takes_the_next_turn() -> None:
    policy = build_policy("round_robin", cands(1, 1, 1, 1), env())
    assert policy.pick("", exclude={"b0", "b1"}) == "b2"
    assert policy.pick("") == "b3"


# -- smooth weighted round robin -------------------------------------------------------------


def test_smooth_weighted_exact_nginx_sequence_5_1_1() -> None:
    # NGINX: weights a=5, b=1, c=1 give "a a b a c a a" (ngx_http_upstream_round_robin.c), then repeat.
    policy = build_policy("weighted", [Candidate("a", 5), Candidate("b", 1), Candidate("c", 1)], env())
    assert [policy.pick("") for _ in range(14)] == list("aabacaa") * 2
    assert nginx_reference([5, 1, 1], 7) == [0, 0, 1, 0, 2, 0, 0]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=9))
def test_smooth_stepper_equals_nginx_loop(weights: list[int]) -> None:
    stepper = SmoothStepper(weights)
    steps = 3 * sum(weights)
    assert [stepper.step() for _ in range(steps)] == nginx_reference(weights, steps)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_smooth_weighted_schedule_equals_nginx_and_matches_weights_exactly(weights: list[int]) -> None:
    policy = SmoothWeighted(cands(*weights), env())
    assert policy.mode == "schedule"
    total = sum(weights)
    picks = [policy.pick("") for _ in range(2 * total)]
    assert picks == [f"b{i}" for i in nginx_reference(weights, 2 * total)]
    counts = Counter(picks)
    assert all(counts[f"b{i}"] == 2 * w for i, w in enumerate(weights))  # exact per period


def test_smooth_weighted_stepper_mode_for_a_huge_total_is_still_exact() -> None:
    weights = [10000, 9999, 7, 1] * 10
    policy = SmoothWeighted(cands(*weights), env())
    assert policy.mode == "stepper"
    assert [policy.pick("") for _ in range(3000)] == [f"b{i}" for i in nginx_reference(weights, 3000)]


def test_smooth_weighted_edf_fallback_keeps_shares_and_smoothness() -> None:
    weights = list(range(1, MAX_CLASSES + 9))  # more distinct weights than the exact stepper takes
    policy = SmoothWeighted(cands(*weights), env())
    assert policy.mode == "edf"
    total = sum(weights)
    picks = [policy.pick("") for _ in range(total)]
    counts = Counter(picks)
    for i, w in enumerate(weights):
        assert abs(counts[f"b{i}"] - w) <= 1
    # smooth: the heaviest backend never gets more than 2 picks in a row
    heavy = f"b{len(weights) - 1}"
    runs = max(len(r) for r in "".join("H" if p == heavy else "." for p in picks).split("."))
    assert runs <= 2


# -- least connections family ----------------------------------------------------------------


def test_least_connections_ties_rotate_like_round_robin() -> None:
    policy = build_policy("least_connections", cands(1, 1, 1), env())
    assert [policy.pick("") for _ in range(6)] == ["b0", "b1", "b2", "b0", "b1", "b2"]


def test_least_connections_with_uneven_durations_balances_in_flight() -> None:
    """Requests to b0 last 10 ticks, to the others 1 tick: b0 must receive far fewer requests and
    the in-flight counts stay within one of each other at every moment."""
    e = env()
    counts = e.counts
    assert isinstance(counts, MutableCounts)
    policy = build_policy("least_connections", cands(1, 1, 1), e)
    duration = {"b0": 10, "b1": 1, "b2": 1}
    ends: list[tuple[int, str]] = []
    received: Counter[str] = Counter()
    for tick in range(3000):
        for end, address in [x for x in ends if x[0] == tick]:
            ends.remove((end, address))
            counts.add(address, -1)
            policy.count_changed(address)
        for _ in range(3):  # three arrivals per tick
            chosen = policy.pick("")
            assert chosen is not None
            counts.add(chosen, 1)
            policy.count_changed(chosen)
            received[chosen] += 1
            ends.append((tick + duration[chosen], chosen))
        loads = [counts.get(a) for a in ("b0", "b1", "b2")]
        assert max(loads) - min(loads) <= 1
    assert received["b0"] < received["b1"] / 3


def _steady_state_shares(name: str, weights: tuple[int, ...], seed: int = 3) -> dict[str | None, float]:
    """Keep 60 requests in flight, finishing the oldest: the share of picks each backend gets."""
    e = env(seed)
    counts = e.counts
    assert isinstance(counts, MutableCounts)
    policy = build_policy(name, cands(*weights), e)
    for i in range(len(weights)):  # ewma: equal latencies, so only load and weight matter
        policy.observe(f"b{i}", 0.01, True, 0.0)
    inflight: list[str] = []
    picks: list[str | None] = []
    for _ in range(12000):
        if len(inflight) >= 60:
            done = inflight.pop(0)
            counts.add(done, -1)
            policy.count_changed(done)
        chosen = policy.pick("")
        assert chosen is not None
        counts.add(chosen, 1)
        policy.count_changed(chosen)
        inflight.append(chosen)
        picks.append(chosen)
    return shares(picks)


@pytest.mark.parametrize("name", ["least_connections", "weighted_least_connections", "p2c", "ewma"])
def test_count_policies_share_load_by_weight_within_5_points(name: str) -> None:
    got = _steady_state_shares(name, (1, 2, 5))
    for i, expected in enumerate((1 / 8, 2 / 8, 5 / 8)):
        assert got[f"b{i}"] == pytest.approx(expected, abs=0.05), got


def test_weighted_least_connections_is_conns_plus_one_over_weight() -> None:
    e = env()
    counts = e.counts
    assert isinstance(counts, MutableCounts)
    counts.add("b0", 1)  # b0: (1+1)/4 = 0.5 ; b1: (0+1)/1 = 1 -> b0 despite its connection
    policy = build_policy("weighted_least_connections", cands(4, 1), e)
    assert policy.pick("") == "b0"
    lc = build_policy("least_connections", cands(4, 1), e)
    assert lc.pick("") == "b1"  # plain least connections: 1/4 > 0/1


def test_p2c_without_load_follows_weights() -> None:
    policy = build_policy("p2c", cands(1, 3), env(7))
    got = shares([policy.pick("") for _ in range(20000)])
    assert got["b1"] == pytest.approx(0.75, abs=0.02)


def test_p2c_prefers_the_less_loaded_of_two() -> None:
    e = env()
    counts = e.counts
    assert isinstance(counts, MutableCounts)
    counts.add("b0", 50)
    policy = build_policy("p2c", cands(1, 1), e)
    assert {policy.pick("") for _ in range(200)} == {"b1"}


# -- ewma ------------------------------------------------------------------------------------


def test_ewma_avoids_the_slow_backend_and_failures_count_as_slow() -> None:
    clock = [100.0]
    e = PolicyEnv(counts=MutableCounts(), rng=random.Random(5), clock=lambda: clock[0])
    policy = build_policy("ewma", cands(1, 1, 1), e)
    policy.observe("b0", 0.010, True, clock[0])
    policy.observe("b1", 0.200, True, clock[0])  # slow
    policy.observe("b2", 0.005, False, clock[0])  # failed: counts as at least 1 s
    got = Counter(policy.pick("") for _ in range(3000))
    assert got["b0"] > 0.6 * 3000
    assert got["b2"] < got["b1"] < got["b0"]


def test_ewma_peak_jumps_up_and_decays_down() -> None:
    from services.proxy.policies.ewma import decayed, update

    state = update(None, 0.1, 0.0, 10.0)
    state = update(state, 0.5, 1.0, 10.0)
    assert state == (0.5, 1.0)  # peak: immediately up
    state = update(state, 0.1, 11.0, 10.0)  # one time constant later: ~63% of the way down
    assert state[0] == pytest.approx(0.5 * 0.3679 + 0.1 * 0.6321, rel=1e-3)
    assert decayed(0.5, 0.0, 20.0, 10.0) == pytest.approx(0.5 * 0.1353, rel=1e-3)


def test_least_connections_ties_follow_weights() -> None:
    """Short requests: every pick sees all counts at 0; ties go by weighted rotation (1:3 exactly)."""
    policy = build_policy("least_connections", cands(1, 3), env())
    picks = [policy.pick("") for _ in range(400)]
    assert Counter(picks) == {"b0": 100, "b1": 300}
    assert max(len(run) for run in "".join("x" if p == "b1" else " " for p in picks).split()) <= 3


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=12),
    st.booleans(),
    st.lists(
        st.tuples(st.sampled_from(["pick", "acquire", "finish", "pick_only", "others"]), st.integers(0, 11)),
        max_size=300,
    ),
    st.sampled_from(["least_connections", "weighted_least_connections"]),
)
def test_count_policies_always_pick_a_lowest_score(
    weights: list[int], equal: bool, ops: list[tuple[str, int]], name: str
) -> None:
    """Whatever the interleaving of picks and count changes (the other replicas' counts jumping
    too), the pick has the lowest score among the non-excluded backends: with unequal weights the
    heap (lazy entries, deferred pushes, compaction), with equal ones the count buckets. Requests
    are started either as the proxy's hot path does (acquire, then released at the end) or with a
    pick and count_changed calls, in any mix."""
    if equal:
        weights = [weights[0]] * len(weights)
    e = env()
    counts = e.counts
    assert isinstance(counts, MutableCounts)
    policy = build_policy(name, cands(*weights), e)
    assert isinstance(policy, _CountBuckets) == (len(set(weights)) == 1)
    plus = 1 if name == "weighted_least_connections" else 0

    def score(address: str) -> float:
        return (counts.get(address) + plus) / weights[int(address[1:])]

    held: list[tuple[str, bool]] = []  # (address, started by acquire)
    rng = random.Random(len(ops))
    for op, arg in ops:
        exclude = {f"b{arg % len(weights)}"} if arg % 3 == 0 and len(weights) > 1 else set()
        if op in ("pick", "pick_only", "acquire"):
            best = min(score(c.address) for c in policy.candidates if c.address not in exclude)
            chosen = policy.acquire("", exclude) if op == "acquire" else policy.pick("", exclude)
            assert chosen is not None and chosen not in exclude
            assert score(chosen) == best
            if op != "pick_only":
                counts.add(chosen, 1)
                if op == "pick" or not policy.counts_acquired:
                    policy.count_changed(chosen)
                held.append((chosen, op == "acquire"))
        elif op == "finish" and held:
            done, acquired = held.pop(arg % len(held))
            counts.add(done, -1)
            if acquired:
                policy.released(done)
            else:
                policy.count_changed(done)
        elif op == "others":  # a refresh of the other replicas' contributions
            others = {c.address: rng.randrange(arg + 1) for c in policy.candidates if rng.random() < 0.5}
            for address in counts.set_others(others):
                policy.count_changed(address)


def test_equal_weight_least_connections_ties_rotate_and_counts_order() -> None:
    """The bucket structure: ties go round in turn; a busier backend waits until the others catch up."""
    e = env()
    counts = e.counts
    assert isinstance(counts, MutableCounts)
    policy = build_policy("least_connections", cands(2, 2, 2), e)
    assert isinstance(policy, _CountBuckets)
    assert [policy.pick("") for _ in range(4)] == ["b0", "b1", "b2", "b0"]
    counts.add("b1", 2)
    policy.count_changed("b1")
    picks = []
    for _ in range(4):
        chosen = policy.pick("")
        assert chosen is not None
        picks.append(chosen)
        counts.add(chosen, 1)
        policy.count_changed(chosen)
    assert picks == ["b2", "b0", "b2", "b0"]  # b1 (2 in flight) only once b0/b2 reach 2
    assert policy.pick("") == "b1"
    assert policy.pick("", {"b1"}) in {"b0", "b2"}


def test_equal_weight_least_connections_hot_path_rotates_ties_and_follows_counts() -> None:
    """acquire/released (one move each, no recount) keep the rotation and the order by count."""
    e = env()
    counts = e.counts
    assert isinstance(counts, MutableCounts)
    policy = build_policy("least_connections", cands(1, 1, 1), e)
    assert isinstance(policy, _CountBuckets) and policy.counts_acquired
    order = []
    for _ in range(6):  # short requests: each over before the next starts
        chosen = policy.acquire("")
        assert chosen is not None
        counts.add(chosen, 1)
        order.append(chosen)
        counts.add(chosen, -1)
        policy.released(chosen)
    assert order == ["b0", "b1", "b2", "b0", "b1", "b2"]
    held = [policy.acquire("") for _ in range(4)]  # b0 b1 b2, then b0 again (all at 1)
    for address in held:
        assert address is not None
        counts.add(address, 1)
    assert held == ["b0", "b1", "b2", "b0"]
    counts.add("b0", -1)
    policy.released("b0")
    assert policy.acquire("", {"b1"}) == "b2"  # b0 is back to 1 like b1, b2: b2 is next in turn
