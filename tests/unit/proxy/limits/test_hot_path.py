"""The hot path's budget: ``Limiter.admit`` for a key under its limit costs at most 40 bytecodes in Python
(``admit_py``, the reference and fallback) and none where the C twin is built (``_fast.admit``), as
tests/integration/proxy/test_bytecode_budget.py does for the whole request: bytecodes do not vary. And the
C twin decides as the reference does."""

from __future__ import annotations

import random
import sys
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.proxy.http import fast
from services.proxy.limits.limiter import Limiter

BUDGET = 40


def count_bytecodes(fn: Any, *args: Any) -> tuple[int, Any]:
    counted = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal counted
        frame.f_trace_opcodes = True
        if event == "opcode":
            counted += 1
        return tracer

    sys.settrace(tracer)
    try:
        result = fn(*args)
    finally:
        sys.settrace(None)
    return counted, result


@pytest.mark.parametrize("compiled", [True, False])
def test_a_key_under_its_limit_is_admitted_within_the_budget(compiled: bool) -> None:
    lim = Limiter("r", 1000, 1.0, compiled=compiled)
    for i in range(5):
        assert lim.admit("198.51.100.7", 100.0 + i / 100) == 0  # (the first takes the slow path)
    batch = lim.begin_sync()  # then granted by a sync, as in production
    lim.complete_sync(batch, [(0, 5, 100, 800, 0)], 3, 100.05)
    assert lim.admit("198.51.100.7", 100.06) == 0  # (disarmed keys take the slow path once)
    counted, result = count_bytecodes(lim.admit, "198.51.100.7", 100.07)
    assert result == 0
    if compiled and fast.COMPILED:
        assert counted == 0, "the C admit runs no bytecode on an admitted request"
    else:
        assert 20 < counted <= BUDGET, f"{counted} bytecodes (budget {BUDGET})"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 0.05), st.booleans()), min_size=1, max_size=300),
    st.integers(1, 20),
    st.integers(0, 5),
)
def test_the_c_admit_decides_as_the_reference(steps: list[tuple[int, float, bool]], limit: int, burst: int) -> None:
    """Random keys, times and syncs (answered alike) on a C limiter and a Python one: the same answers, the same
    state."""
    lims = [Limiter("r", limit, 1.0, burst=burst, compiled=c, rng=random.Random(7)) for c in (True, False)]
    now = 100.0
    answers: list[list[int]] = [[], []]
    for key, dt, sync in steps:
        now += dt
        for i, lim in enumerate(lims):
            answers[i].append(lim.admit(f"10.0.0.{key}", now))
            if sync:
                batch = lim.begin_sync()
                lim.complete_sync(batch, [(0, p.over + 1, 0, p.want, 0) for p in batch.items], 2, now)
    assert answers[0] == answers[1]
    assert lims[0].denied == lims[1].denied
    states = [sorted((k, e.count, e.end, e.cap, e.slope, e.asked) for k, e in lim._young.items()) for lim in lims]
    assert states[0] == states[1]
