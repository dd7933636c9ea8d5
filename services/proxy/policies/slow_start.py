"""Slow start: a backend that joins or recovers ramps its effective weight up over a window.

The ramp is linear and quantised in ``STEPS`` steps (1/10, 2/10, ... 10/10 of the weight), so the
owner rebuilds its policy at most ``STEPS`` times per window instead of on every pick.
"""

from __future__ import annotations

import math

STEPS = 10


def ramp(since: float, now: float, window: float) -> tuple[float, float | None]:
    """(factor, time of the next step or None when fully ramped) for a backend usable since ``since``."""
    if window <= 0 or now - since >= window or math.isinf(since):
        return 1.0, None
    step_len = window / STEPS
    step = max(0, int((now - since) / step_len)) + 1  # 1..STEPS
    if step >= STEPS:
        return 1.0, None
    return step / STEPS, since + step * step_len
