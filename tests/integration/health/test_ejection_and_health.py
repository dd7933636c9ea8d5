"""Passive ejection and active health are two signals (issue 17.1).

A backend answering 500 passes a TCP probe. Once a proxy has ejected it, the health service probing it
every 0.1 s must not end the ejection: it lasts its configured time, then the backend is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from services.proxy.balancer import Outcome
from services.proxy.store_balancer import StoreBalancer, open_store_balancer
from shared.config import Config, OutlierConfig, Seconds
from shared.store import Store
from tests.helpers import eventually
from tests.integration.health.conftest import Recorder

EJECTION_SEC = 1.5
Fixture = Callable[..., Any]


def picked(balancer: StoreBalancer, tries: int = 8) -> set[str]:
    out: set[str] = set()
    for i in range(tries):
        upstream = balancer.pick(str(i))
        if upstream is not None:
            out.add(upstream.address)
            balancer.finished(upstream, Outcome(ok=True, latency=0.001, status=200))
    return out


async def test_passing_probes_do_not_cut_an_ejection_short(
    redis_url: str, namespace: str, store: Store, recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    bad, good = await backends(2)
    bad.set_mode("error")  # 500 to every request; the TCP probe passes all the same
    scheduler = await start_scheduler(type="tcp", interval_sec=0.1, jitter=0.0, rise=1, fall=2)
    for b in (bad, good):
        await recorder.wait_for(b.address, "up")

    config = Config()
    config.redis.url, config.redis.namespace = redis_url, namespace
    config.balancing.outlier = OutlierConfig(
        consecutive_failures=3, base_ejection_sec=Seconds(EJECTION_SEC), max_ejection_percent=50
    )
    own = Store.from_url(redis_url, namespace)
    try:
        async with open_store_balancer(config, own) as balancer:
            await eventually(lambda: picked(balancer) == {bad.address, good.address}, message="both backends in use")
            upstream = balancer._upstreams[bad.address]
            for _ in range(3):  # what the proxy does on three 500s in a row
                balancer.started(upstream)
                balancer.finished(upstream, Outcome(ok=False, latency=0.001, status=500))
            ejected_at = time.time()

            async def published() -> bool:
                view = await store.get_backend(bad.address)
                return view is not None and view.ejected()

            await eventually(published, timeout=2, message="the ejection reached the store")
            probes_before = scheduler.targets[bad.address].probes
            # While the ejection lasts: still in the store, never picked, and the probes keep passing.
            while time.time() < ejected_at + EJECTION_SEC - 0.2:
                view = await store.get_backend(bad.address)
                assert view is not None and view.ejection is not None and view.ejected(), (
                    f"ejection gone {time.time() - ejected_at:.2f}s after it was decided (configured {EJECTION_SEC}s)"
                )
                assert view.health.status == "up"
                assert bad.address not in picked(balancer)
                await asyncio.sleep(0.05)  # a sampling period, not a synchronisation
            assert scheduler.targets[bad.address].probes - probes_before >= 5, "the health service kept probing"
            assert recorder.statuses(bad.address) == ["up"]
            # At its own end the backend is back: health says up and no ejection is in force.
            await eventually(
                lambda: bad.address in picked(balancer), timeout=EJECTION_SEC, message="back after the ejection"
            )
            assert time.time() >= ejected_at + EJECTION_SEC - 0.05
    finally:
        await own.close()
