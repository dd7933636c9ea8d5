"""A backend SIGKILLed under load, then started again.

Expected: no idempotent request fails (the proxy retries a refused connect on another backend);
the health checker marks the backend down within fall x interval (+ one probe timeout), after which
no traffic is sent to it; when it returns it ramps up over ``balancing.slow_start_sec``.
"""

from __future__ import annotations

import asyncio
import time

from shared.redis_server import RedisServer
from shared.store import Store
from tests.reliability.conftest import Results, SuiteFactory
from tests.reliability.stack import run_loads, start_stack
from tests.reliability.suite import await_port

SLOW_START = 3.0
INTERVAL, TIMEOUT, FALL = 0.2, 0.2, 2
EJECTION = 1.0  # shorter than C stays down (detection by health, then 1 s)


async def test_backend_killed_and_ramped_up(
    redis_server: RedisServer, make_suite: SuiteFactory, suite_store: Store, results: Results
) -> None:
    # The refused connects eject C (passive health) as well as health marking it down. An ejection lasts its
    # own time whatever the probes say (issue 17.1), so it is kept shorter than C's downtime here: C's return
    # is then health's call, and the slow start is what this test measures.
    overrides = {"balancing.slow_start_sec": SLOW_START, "balancing.outlier.base_ejection_sec": EJECTION}
    suite = make_suite(redis_server.url, overrides=overrides)
    stack = await start_stack(suite, backends=3, proxies=1, admin=False)
    victim = next(p for p in suite.procs if p.name == "backend-C")
    address = stack.backends["C"]
    port = int(address.rsplit(":", 1)[1])

    loads = [load.start() for load in stack.loads(connections_per_port=3, max_seconds=40)]
    await asyncio.sleep(1.0)  # steady state: C takes a third of the traffic
    killed = time.monotonic()
    await asyncio.to_thread(victim.kill)
    off_after = None  # ejected by a proxy (passive) or marked down by health (active), whichever first
    down_after = None  # marked down by the health checker
    while time.monotonic() - killed < 10 and down_after is None:
        view = await suite_store.get_backend(address)
        if view is not None and off_after is None and (view.health.status == "down" or view.ejected()):
            off_after = time.monotonic() - killed
        if view is not None and view.health.status == "down":
            down_after = time.monotonic() - killed
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)  # C stays down: all traffic on A and B
    restarted = time.monotonic()
    suite.start_backend("C", port)
    await await_port(port)
    await asyncio.sleep(SLOW_START + 2.5)  # rise (2 probes) + the slow-start window + a warm second
    result = await run_loads(loads)

    started = loads[0]._started
    share: list[tuple[float, float]] = []  # (bucket start since restart, share of C)
    bucket = 0.5
    t = restarted - started
    end = max(x[0] for x in result.timeline)
    while t + bucket <= end:
        names = [b for (at, b, ok) in result.timeline if ok and t <= at < t + bucket]
        if names:
            share.append((t - (restarted - started), names.count("C") / len(names)))
        t += bucket
    dead = [at for (at, b, ok) in result.timeline if b == "C" and killed - started + 0.05 < at < restarted - started]
    first_c = next((at for (at, b, ok) in result.timeline if b == "C" and at > restarted - started), None)

    target = FALL * INTERVAL + TIMEOUT + 0.3
    results.record("client requests", result.total, target="> 0", ok=result.total > 0)
    results.record("failed requests", result.failed, target="0", ok=result.failed == 0)
    results.record("out of rotation after kill (ejected or down)", off_after if off_after is not None else "never",
                   "s")  # fmt: skip
    results.record("health marked it down after", down_after if down_after is not None else "never", "s",
                   f"< {target:g} (fall x interval + timeout + 0.3)",
                   down_after is not None and down_after < target)  # fmt: skip
    results.record("responses from C while dead", len(dead), target="0", ok=not dead)
    share[1][1] if len(share) > 1 else 0.0
    if first_c is not None:
        results.record("first response from C after restart", first_c - (restarted - started), "s")
    ramp = " ".join(f"{s:.2f}" for _, s in share)
    results.record("C share per 0.5 s after restart", ramp)
    final = sum(s for at, s in share if at >= SLOW_START + 1.0) / max(
        1, len([1 for at, _ in share if at >= SLOW_START + 1.0])
    )
    results.record("C share after the window", final, target="~0.33", ok=0.2 < final < 0.45)

    assert result.total > 0
    assert result.failed == 0, result.errors
    assert down_after is not None and down_after < target, down_after
    assert not dead
    # Slow start: C's share grows over the window, from well below its fair third to about it.
    ramping = [s for at, s in share if 0 <= at < SLOW_START and s > 0]
    assert ramping, share
    assert ramping[0] < 0.2, share
    assert 0.2 < final < 0.45, share
