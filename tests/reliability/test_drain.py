"""Drain through the admin API while requests are in flight on the backend.

Expected: the API answers with the backend's in-flight count, new traffic stops going to it at once
(every proxy replica), and the requests already on it finish with a 200.
"""

from __future__ import annotations

import asyncio
import time

from shared.redis_server import RedisServer
from shared.store import Store
from tests.reliability.conftest import Results, SuiteFactory
from tests.reliability.load import _read_response
from tests.reliability.probe import propagation
from tests.reliability.stack import start_stack

HOLD = 2.0


async def held_request(port: int) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /?delay={HOLD} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, _ = await asyncio.wait_for(_read_response(reader), HOLD + 10)
        return status, headers.get("x-backend", "")
    finally:
        writer.close()


async def test_drain_in_flight(
    redis_server: RedisServer, make_suite: SuiteFactory, suite_store: Store, results: Results
) -> None:
    suite = make_suite(redis_server.url)
    stack = await start_stack(suite, backends=2, proxies=2, slow_backends=True)
    a = stack.backends["A"]
    held = [asyncio.create_task(held_request(port)) for port in stack.ports for _ in range(2)]
    deadline = time.monotonic() + 10
    while (await suite_store.global_inflight()).get(a, 0) < 2:
        assert time.monotonic() < deadline, "held requests never counted"
        await asyncio.sleep(0.05)
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
