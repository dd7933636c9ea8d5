"""A new rate-limit table swapped into a running proxy (``LiveLimits``): kept rules keep their counts,
requests in flight finish, no rule left means no gate; the store's document is read again after a re-sync."""

from __future__ import annotations

import asyncio

from services.proxy.limits.live import LiveLimits
from shared.config.limits import RateLimitRule, RateLimitsDocument
from shared.models import AlgorithmSetting, Event, Snapshot
from shared.store import Store
from shared.store.rate_limits import set_rate_limits
from tests.helpers import eventually
from tests.integration.proxy.backends import Backend, Backends, request, slow
from tests.integration.proxy.conftest import StartYaml

GET = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"


def rule(name: str, rate: str = "2/h", **more: object) -> RateLimitRule:
    return RateLimitRule(name=name, rate=rate, **more)  # type: ignore[arg-type]


async def test_a_swap_keeps_the_counts_of_kept_rules_and_lets_requests_in_flight_finish(
    backends: Backends, start_yaml: StartYaml
) -> None:
    b = await backends.add(Backend(slow(0.5)))
    proxy = await start_yaml(
        f'listen_address: 127.0.0.1:1\nbackends: [{{address: "{b.address}"}}]\n'
        "rate_limits: {rules: [{name: two, rate: 2/h}]}\n"
    )
    loop = asyncio.get_running_loop()
    live = LiveLimits(proxy.config.rate_limits, loop, None)
    live.attach([proxy.context])
    first = live.gate
    assert first is not None and proxy.context.gate is first
    assert [(await request(proxy.port, GET)).status for _ in range(3)] == [200, 200, 429]
    # A table with the kept rule and a new one.
    assert live.install(RateLimitsDocument(rules=[rule("two"), rule("other", "100/s")]), 1)
    second = proxy.context.gate
    assert second is not None and second is live.gate and [x.rule.name for x in second.bound] == ["two", "other"]
    assert second.bound[0].limiter is first.bound[0].limiter  # same name, rate, burst, key: its counts go on
    assert (await request(proxy.port, GET)).status == 429  # "two" still remembers this client's two requests
    # No rule at all: no gate (no cost per request); a request in flight across two swaps finishes.
    assert live.install(RateLimitsDocument(rules=[]), 2)
    assert proxy.context.gate is None
    slow_one = asyncio.create_task(request(proxy.port, GET, timeout=5))
    await eventually(lambda: len(b.requests) == 3)
    assert live.install(RateLimitsDocument(rules=[rule("two", "1/h")]), 3)
    assert (await slow_one).status == 200
    # The new table's 1/h counts from its install (the slow request started before it).
    assert [(await request(proxy.port, GET)).status for _ in range(2)] == [200, 429]
    # An older version changes nothing; a changed rate starts the rule afresh.
    assert not live.install(RateLimitsDocument(rules=[]), 3)
    assert live.install(RateLimitsDocument(rules=[rule("two", "3/h")]), 4)
    assert proxy.context.gate is not None and proxy.context.gate.bound[0].limiter is not first.bound[0].limiter
    assert [(await request(proxy.port, GET)).status for _ in range(4)] == [200, 200, 200, 429]
    # The document removed (None): the config file's rules again.
    assert live.install(None, 5)
    assert proxy.context.gate is not None and [x.rule.name for x in proxy.context.gate.bound] == ["two"]
    assert live.source == "config" and live.installs == 5


async def test_events_install_and_a_resync_reads_the_document_again(
    backends: Backends, start_yaml: StartYaml, store: Store
) -> None:
    b = await backends.add(Backend())
    proxy = await start_yaml(f'listen_address: 127.0.0.1:1\nbackends: [{{address: "{b.address}"}}]\n')
    live = LiveLimits(proxy.config.rate_limits, asyncio.get_running_loop(), store)
    await live.load()
    live.attach([proxy.context])
    assert live.gate is None and live.version == 0
    # An event carries the document.
    live.on_item(Event(version=5, kind="rate_limits", rate_limits=RateLimitsDocument(rules=[rule("r1")])))
    assert proxy.context.gate is not None and live.sync is not None  # (the sync task follows the rules)
    # A write whose event this proxy missed: the next full re-sync (a Snapshot) reads the document (it wins
    # even at a lower version than the last event's, 5 here: as after a Redis that lost its data).
    changed, version = await set_rate_limits(store, [rule("r2", "5/s")])
    assert changed and version is not None
    live.changed.clear()
    live.on_item(Snapshot(version=version, backends={}, algorithm=AlgorithmSetting()))
    await asyncio.wait_for(live.changed.wait(), 5)
    assert live.gate is not None and [x.rule.name for x in live.gate.bound] == ["r2"] and live.source == "store"
    assert proxy.context.gate is live.gate
    await live.close()
