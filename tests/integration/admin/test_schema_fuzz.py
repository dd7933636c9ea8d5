"""Schemathesis against the OpenAPI schema: generated requests (valid and not) never get a 5xx.

The schema is taken from the app itself; the calls go to a real admin server (uvicorn on loopback)
with its own Redis namespace. /events is left out: it is an endless stream.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.admin.app import create_app
from shared.config.durations import enc_hook
from shared.store import Store
from tests.integration.admin.server import ServedAdmin, admin_config

_schema_app = create_app(admin_config("redis://127.0.0.1:1/0", "schema-only"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# (As served: through JSON, durations such as a health check's interval_sec default are plain numbers.)
_served = msgspec.json.decode(msgspec.json.encode(_schema_app.openapi_schema.to_schema(), enc_hook=enc_hook))
schema = schemathesis.openapi.from_dict(_served).exclude(path="/events")


@pytest.fixture(scope="module")
def fuzz_server(redis_url: str) -> Iterator[ServedAdmin]:
    namespace = f"test-fuzz-{uuid.uuid4().hex[:8]}"
    with ServedAdmin(admin_config(redis_url, namespace)) as admin:
        yield admin
    cleanup = Store.from_url(redis_url, namespace)

    async def wipe() -> None:
        keys = [k async for k in cleanup.redis.scan_iter(match=f"{namespace}:*")]
        if keys:
            await cleanup.redis.delete(*keys)
        await cleanup.close()

    asyncio.run(wipe())  # a sync module fixture: no running loop here


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, fuzz_server: ServedAdmin) -> None:
    # No 5xx, and every answer is documented: its status code, content type and body schema.
    # (Not "positive data acceptance": the schema cannot express every address rule, e.g. port <= 65535.)
    response = case.call_and_validate(base_url=fuzz_server.url, timeout=10, checks=CHECKS)
    assert response.status_code < 500
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/problem+json"), response.text
