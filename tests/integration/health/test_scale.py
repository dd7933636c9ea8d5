"""1,000 backends on one replica: every backend gets its verdict on time, and stays on schedule."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.models import Backend
from shared.store import Store
from tests.helpers import eventually

OPEN, CLOSED = 1000, 50


@pytest.fixture
def sockets() -> Iterator[tuple[list[socket.socket], list[socket.socket]]]:
    """1,000 listening sockets on 127.0.0.1 and 50 bound but not listening (connects are refused).

    The listeners never accept: the kernel completes the handshake from the backlog, which is all a
    TCP probe needs, so the test process spends no CPU serving them.
    """
    listening: list[socket.socket] = []
    refusing: list[socket.socket] = []
    try:
        for i in range(OPEN + CLOSED):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if i < OPEN:
                s.listen(128)
                listening.append(s)
            else:
                refusing.append(s)
        yield listening, refusing
    finally:
        for s in listening + refusing:
            s.close()


async def test_a_thousand_backends_probed_on_time(
    store: Store, sockets: tuple[list[socket.socket], list[socket.socket]], start_scheduler: Callable[..., Any]
) -> None:
    listening, refusing = sockets
    up = {f"127.0.0.1:{s.getsockname()[1]}" for s in listening}
    down = {f"127.0.0.1:{s.getsockname()[1]}" for s in refusing}
    for address in sorted(up | down):
        await store.create_backend(Backend(address=address))

    interval = 2.0  # the target: 1,000 backends at a 2 s interval on one replica
    started = time.monotonic()
    scheduler = await start_scheduler(type="tcp", interval_sec=interval, jitter=0.1, timeout_sec=1.0)
    assert len(scheduler.targets) == OPEN + CLOSED

    wrong: dict[str, int] = {}

    async def all_written() -> bool:
        snap = await store.snapshot()
        wrong.clear()
        for a, v in snap.backends.items():
            if v.health.status != ("up" if a in up else "down"):
                wrong[v.health.status] = wrong.get(v.health.status, 0) + 1
        return not wrong

    try:
        await eventually(all_written, timeout=interval + 3.0, interval=0.25)
    except AssertionError:
        verdicts = sum(1 for t in scheduler.targets.values() if t.probes)
        raise AssertionError(f"verdicts not written: {wrong} (backends with a verdict: {verdicts})") from None
    firsts = sorted(t.first_verdict_at - started for t in scheduler.targets.values())
    # First probes are spread over the jitter window (0.2 s); every verdict lands within one interval.
    assert firsts[-1] <= interval, (
        f"slowest first verdict after {firsts[-1]:.3f}s (p50 {firsts[len(firsts) // 2]:.3f}s)"
    )

    # Then every backend stays on its schedule for three more rounds.
    targets = list(scheduler.targets.values())
    for t in targets:
        t.max_gap = 0.0
    base = {t.address: t.probes for t in targets}
    await eventually(
        lambda: all(t.probes - base[t.address] >= 3 for t in targets), timeout=3 * interval + 3.0, interval=0.1
    )
    gaps = sorted(t.max_gap for t in targets)
    assert gaps[-1] <= interval + 0.5, (
        f"a backend waited {gaps[-1]:.3f}s between probes (p50 {gaps[len(gaps) // 2]:.3f}s)"
    )
    assert {a for a, t in scheduler.targets.items() if t.state.status == "up"} == up
