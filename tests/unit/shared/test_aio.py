"""``Turns``: a burst of buffered work gives the loop a turn after ``batch`` items or ``slice_sec``."""

from __future__ import annotations

import asyncio
import time

from shared.aio import Turns


async def test_a_turn_every_batch_items_when_work_is_fast() -> None:
    turns = Turns(batch=10, slice_sec=60.0)
    ran: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: ran.append(1))
    for _ in range(9):
        await turns.after_item()
    assert (turns.count, ran) == (0, [])  # nine items: the loop had no turn yet
    await turns.after_item()
    assert (turns.count, ran) == (1, [1])  # the tenth: the callback waiting on the loop ran
    for _ in range(25):
        await turns.after_item()
    assert turns.count == 3


async def test_a_turn_after_slice_sec_when_work_is_slow() -> None:
    turns = Turns(batch=1000, slice_sec=0.005)
    started = time.perf_counter()
    while turns.count == 0:
        deadline = time.perf_counter() + 0.001
        while time.perf_counter() < deadline:  # an item that takes 1 ms
            pass
        await turns.after_item()
    held = time.perf_counter() - started
    assert 0.005 <= held < 0.05, held  # about five items, far fewer than the batch
