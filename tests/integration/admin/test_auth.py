"""Bearer-token auth: off by default, mutating calls only, and reads too with protect_reads."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from services.admin.app import create_app
from shared.store import Store
from tests.integration.admin.server import admin_config
from tests.integration.admin.test_backends_api import assert_problem

TOKEN = "s3cret-token"


async def test_no_token_configured_means_no_auth(redis_url: str, namespace: str) -> None:
    async with AsyncTestClient(create_app(admin_config(redis_url, namespace))) as client:
        r = await client.post("/backends", json={"address": "10.0.0.1:80"}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 201


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"bearer  {TOKEN[:-1]}"],
)
async def test_mutations_need_the_token(redis_url: str, namespace: str, store: Store, header: str | None) -> None:
    app = create_app(admin_config(redis_url, namespace, token=TOKEN))
    headers = {"Authorization": header} if header is not None else {}
    async with AsyncTestClient(app) as client:
        for method, path, body in [
            ("POST", "/backends", {"address": "10.0.0.1:80"}),
            ("PUT", "/backends/10.0.0.1:80", {"weight": 2}),
            ("PATCH", "/backends/10.0.0.1:80", {"weight": 2}),
            ("DELETE", "/backends/10.0.0.1:80", None),
            ("POST", "/backends/10.0.0.1:80/drain", None),
            ("PUT", "/algorithm", {"algorithm": "p2c"}),
            # Invalid bodies are refused as unauthorized first: nothing about the request leaks.
            ("POST", "/backends", {"nonsense": True}),
        ]:
            r = await client.request(method, path, json=body, headers=headers)
            assert_problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert await store.version() == 0
        # Reads stay open without protect_reads.
        assert (await client.get("/backends")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_the_right_token_is_accepted(redis_url: str, namespace: str) -> None:
    app = create_app(admin_config(redis_url, namespace, token=TOKEN))
    async with AsyncTestClient(app) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.post("/backends", json={"address": "10.0.0.1:80"}, headers=auth)).status_code == 201
        assert (await client.put("/backends/10.0.0.1:80", json={"weight": 4}, headers=auth)).status_code == 200
        assert (await client.delete("/backends/10.0.0.1:80", headers=auth)).status_code == 204


async def test_protect_reads(redis_url: str, namespace: str) -> None:
    app = create_app(admin_config(redis_url, namespace, token=TOKEN, protect_reads=True))
    async with AsyncTestClient(app) as client:
        for path in (
            "/backends",
            "/backends/10.0.0.1:80",
            "/algorithm",
            "/replicas",
            "/metrics",
            "/schema/openapi.json",
        ):
            assert_problem(await client.get(path), 401)
        # Probes stay open.
        assert (await client.get("/health")).status_code == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/backends", headers=auth)).status_code == 200
        assert (await client.get("/schema/openapi.json", headers=auth)).status_code == 200
