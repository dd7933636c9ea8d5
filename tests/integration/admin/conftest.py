"""Fixtures of the admin API tests: the app behind Litestar's AsyncTestClient, on a private namespace.

AsyncTestClient (Litestar 2.x) runs the app in a thread with its own event loop, so the app opens its
own Store in its lifespan (pointed at the test's namespace); the test's ``store`` fixture looks at the
same keys from the test's loop, for out-of-band changes and for checking what was (not) written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.admin.app import create_app
from tests.integration.admin.server import admin_config


@pytest.fixture
def app(redis_url: str, namespace: str) -> Litestar:
    return create_app(admin_config(redis_url, namespace))


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app) as c:
        yield c
