"""Drain through the admin API while requests are in flight on the backend.

Expected: the API answers with the backend's in-flight count, new traffic stops going to it at once
(every proxy replica), and the requests already on it finish with a 200.
"""

from __future__ import annotations

import asyncio
import time

from shared.redis_server import RedisServer
from shared.store import Store
from tests.helpers import eventually
from tests.reliability.conftest import Results, SuiteFactory
from tests.reliability.load import held_request
from tests.reliability.probe import propagation
from tests.reliability.stack import start_stack

HOLD = 2.0


async def test_drain_in_flight(
    redis_server: RedisServer, make_suite: SuiteFactory, suite_store: Store, results: Results
) -> None:
    suite = make_suite(redis_server.url)
    stack = await start_stack(suite, backends=2, proxies=2, slow_backends=True)
    a = stack.backends["A"]
    held = [asyncio.create_task(held_request(port, HOLD)) for port in stack.ports for _ in range(2)]

    async def counted() -> bool:
        return (await suite_store.global_inflight()).get(a, 0) >= 2

    await eventually(counted, timeout=10, interval=0.05, message="held requests never counted")
    async with stack.admin() as admin:
        response = await admin.post(f"/backends/{a}/drain")
    drained = time.monotonic()
    assert response.status_code == 200, response.text
    reported = response.json()["in_flight"]
    times = await propagation(stack.ports, {"B"}, drained, timeout=10)
    outcomes = await asyncio.gather(*held)
    on_a = [status for status, name in outcomes if name == "A"]
    results.record("in-flight reported by the drain call", reported, target=">= 2", ok=reported >= 2)
    for i, t in enumerate(times):
        results.record(f"new traffic off A on proxy-{i + 1}", t, "s", "< 1.0", t < 1.0)
    results.record("held requests on A finished 200", f"{on_a.count(200)}/{len(on_a)}", target="all",
                   ok=bool(on_a) and all(s == 200 for s in on_a))  # fmt: skip
    assert reported >= 2
    assert max(times) < 1.0
    assert on_a and all(status == 200 for status in on_a), outcomes
    assert all(status == 200 for status, _ in outcomes)
