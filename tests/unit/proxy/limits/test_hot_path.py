"""The hot path's budget: ``Limiter.admit`` for a key under its limit costs at most 40 bytecodes (as
tests/integration/proxy/test_bytecode_budget.py does for the whole request: bytecodes do not vary)."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

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


def test_a_key_under_its_limit_is_admitted_within_the_budget() -> None:
    lim = Limiter("r", 1000, 1.0)
    for i in range(5):
        assert lim.admit("198.51.100.7", 100.0 + i / 100) == 0  # (the first takes the slow path)
    batch = lim.begin_sync()  # then granted by a sync, as in production
    lim.complete_sync(batch, [(0, 5, 100, 800, 0)], 3, 100.05)
    assert lim.admit("198.51.100.7", 100.06) == 0  # (disarmed keys take the slow path once)
    counted, result = count_bytecodes(lim.admit, "198.51.100.7", 100.07)
    assert result == 0
    assert 20 < counted <= BUDGET, f"{counted} bytecodes (budget {BUDGET})"
