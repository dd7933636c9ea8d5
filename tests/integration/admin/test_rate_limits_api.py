"""`GET/PUT/DELETE /rate-limits` through AsyncTestClient, against a real Redis."""

from __future__ import annotations

import json
import time
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from shared.store import Store
from shared.store.rate_limits import get_rate_limits
from tests.integration.admin.test_backends_api import assert_problem

Client = AsyncTestClient[Litestar]

RULE = {"name": "per-client", "rate": "100/s", "burst": 10}
API = {"name": "api", "rate": "6000/min", "key": "header:X-Key"}


async def next_event(pubsub: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            event: dict[str, Any] = json.loads(message["data"])
            return event
    raise AssertionError("no event published")


async def test_without_a_stored_table_the_config_files_rules_are_in_force(client: Client) -> None:
    r = await client.get("/rate-limits")
    assert r.status_code == 200
    assert r.json() == {"source": "config", "rules": [], "updated_at": None, "version": 0, "changed": None}


async def test_put_stores_the_table_publishes_one_event_and_an_equal_table_writes_nothing(
    client: Client, store: Store
) -> None:
    pubsub = store.redis.pubsub()
    await pubsub.subscribe(store.keys.events)
    try:
        r = await client.put("/rate-limits", json={"rules": [RULE, API]})
        assert r.status_code == 200, r.text
        body = r.json()
        names = [x["name"] for x in body["rules"]]
        assert (body["source"], body["changed"], names) == ("store", True, ["per-client", "api"])
        assert body["rules"][1]["key"] == "header:x-key" and body["rules"][0]["applies_to"] == "all"
        event = await next_event(pubsub)
        assert event["kind"] == "rate_limits" and event["version"] == body["version"]
        assert [x["name"] for x in event["rate_limits"]["rules"]] == ["per-client", "api"]
        doc, version = await get_rate_limits(store)
        assert doc is not None and version == body["version"] and doc.rules[0].burst == 10
        # The same rules again: nothing written, no version bump.
        again = await client.put("/rate-limits", json={"rules": [RULE, API]})
        assert again.json()["changed"] is False and again.json()["version"] == version
        assert (await client.get("/rate-limits")).json()["rules"] == body["rules"]
        # DELETE: back to the config file's rules (an event with no table).
        gone = await client.delete("/rate-limits")
        assert gone.status_code == 200 and gone.json()["source"] == "config" and gone.json()["changed"] is True
        event = await next_event(pubsub)
        assert event["kind"] == "rate_limits" and event["rate_limits"] is None
        assert (await get_rate_limits(store))[0] is None
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_a_bad_table_is_refused_naming_the_field_and_the_one_in_force_stays(client: Client, store: Store) -> None:
    assert (await client.put("/rate-limits", json={"rules": [RULE]})).status_code == 200
    before = await get_rate_limits(store)
    cases = [
        ({"rules": [{"name": "x", "rate": "100/day"}]}, "rules[0].rate"),
        ({"rules": [{"name": "x", "rate": "0/s"}]}, "rules[0].rate"),
        ({"rules": [RULE, {"name": "b", "rate": "1/s", "key": "ip"}]}, "rules[1].key"),
        ({"rules": [{"name": "bad name", "rate": "1/s"}]}, "rules[0].name"),
        ({"rules": [{"name": "x", "rate": "1/s", "burst": -1}]}, "rules[0].burst"),
        ({"rules": [{"name": "x", "rate": "1/s", "applies_to": "pool:nope"}]}, "rules[0].applies_to"),
        ({"rules": [{"name": "x", "rate": "1/s", "applies_to": "route:nope"}]}, "rules[0].applies_to"),
        ({"rules": [{"name": "x", "rate": "1/s", "applies_to": "everything"}]}, "rules[0].applies_to"),
        ({"rules": [{"name": "x", "rate": "1/s", "speed": 2}]}, "rules[0].speed"),
        ({"rules": [{"rate": "1/s"}]}, "rules[0].name"),
        ({"rules": [RULE, RULE]}, "rules[1].name"),
        ({}, "rules"),
        ({"rules": "none"}, "rules"),
    ]
    for body, field in cases:
        assert_problem(await client.put("/rate-limits", json=body), 400, field)
    r = await client.put("/rate-limits", content=b"rules: []", headers={"content-type": "text/yaml"})
    assert r.status_code == 415
    assert await get_rate_limits(store) == before


async def test_writes_need_the_token_when_one_is_set(redis_url: str, namespace: str) -> None:
    from services.admin.app import create_app
    from tests.integration.admin.server import admin_config

    app = create_app(admin_config(redis_url, namespace, token="s3cret-token-of-enough-length"))
    async with AsyncTestClient(app) as c:
        assert (await c.put("/rate-limits", json={"rules": [RULE]})).status_code == 401
        ok = await c.put(
            "/rate-limits", json={"rules": [RULE]}, headers={"authorization": "Bearer s3cret-token-of-enough-length"}
        )
        assert ok.status_code == 200


async def test_a_rule_may_apply_to_a_pool_or_route_that_lives_in_the_store(client: Client, store: Store) -> None:
    from shared.config import RouteConfig
    from shared.models import PoolSetting, RouteTableSetting

    rules = {"rules": [{"name": "p", "rate": "1/s", "applies_to": "pool:api"}]}
    assert (await client.put("/rate-limits", json=rules)).status_code == 400  # (no such pool yet)
    await store.set_pool(PoolSetting(name="api"), mode="create")
    r = await client.put("/rate-limits", json=rules)
    assert r.status_code == 200, r.text
    # A stored route table replaces the config's: its routes are the ones a rule may name.
    await store.set_routes(RouteTableSetting(routes=[RouteConfig(name="to-api", pool="api")]))
    r = await client.put("/rate-limits", json={"rules": [{"name": "r", "rate": "1/s", "applies_to": "route:to-api"}]})
    assert r.status_code == 200, r.text
