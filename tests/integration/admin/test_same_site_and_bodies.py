"""Issue 15 items 4, 5, 6 through the API: what a web page, a hostile body or the suite's own address gets.

Each refused call writes nothing (the store's version does not move).
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.admin.app import create_app
from shared.redis_server import free_port
from shared.store import Store
from tests.integration.admin.server import admin_config
from tests.integration.admin.test_backends_api import assert_problem

Client = AsyncTestClient[Litestar]
BODY = b'{"address": "10.0.0.7:80", "weight": 4}'


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", BODY),
        ("text/plain;charset=UTF-8", BODY),
        ("application/x-www-form-urlencoded", BODY),
        ("application/x-www-form-urlencoded", b"address=10.0.0.7%3A80&weight=4"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--\r\n'),
        (None, BODY),
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(
    client: Client, store: Store, content_type: str | None, body: bytes
) -> None:
    before = await store.version()
    headers = {"content-type": content_type} if content_type is not None else {}
    r = await client.post("/backends", content=body, headers=headers)
    if content_type is None:  # (httpx sends none): still 415
        assert r.status_code == 415
    assert_problem(r, 415, "content-type")
    put = await client.put("/algorithm", content=b'{"algorithm": "p2c"}', headers={"content-type": "text/plain"})
    assert_problem(put, 415, "content-type")
    # A bodiless mutation with a form's content type (a cross-site form posting to drain) too.
    drain = await client.post("/backends/10.0.0.7:80/drain", content=b"", headers={"content-type": "text/plain"})
    assert_problem(drain, 415, "content-type")
    assert await store.version() == before


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "https://127.0.0.1.evil.example", "null", "http://testserver.local:8080"]
)
async def test_a_foreign_origin_is_403_for_writes_and_reads(client: Client, store: Store, origin: str) -> None:
    before = await store.version()
    r = await client.post("/backends", json={"address": "10.0.0.7:80"}, headers={"origin": origin})
    assert_problem(r, 403, "origin")
    assert_problem(await client.get("/backends", headers={"origin": origin}), 403, "origin")
    assert await store.version() == before


async def test_the_same_origin_passes(client: Client) -> None:
    # The dashboard's own calls: Origin = the page's origin = scheme://Host.
    r = await client.post("/backends", json={"address": "10.0.0.7:80"}, headers={"origin": "http://testserver.local"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8081", "admin.attacker.test"])
async def test_a_foreign_host_is_403(redis_url: str, namespace: str, store: Store, host: str) -> None:
    """DNS rebinding: a name of the attacker's that resolves to the admin's address."""
    app = create_app(admin_config(redis_url, namespace))
    before = await store.version()
    async with AsyncTestClient(app) as client:
        r = await client.post("/backends", json={"address": "10.0.0.7:80"}, headers={"host": host})
        assert_problem(r, 403, "host")
        assert_problem(await client.get("/backends", headers={"host": host}), 403, "host")
    assert await store.version() == before


@pytest.mark.parametrize("host", ["127.0.0.1:8081", "[::1]:8081", "localhost:8081", "10.1.2.3", "admin.example.com"])
async def test_own_names_ip_literals_and_allowed_hosts_pass(redis_url: str, namespace: str, host: str) -> None:
    app = create_app(admin_config(redis_url, namespace, allowed_hosts=["admin.example.com"]))
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health", headers={"host": host})).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b'{"address": "10.0.0.1:80", "weight": 1, "x": "\xff\xfe"}',
        b'\xff\xfe{\x00"\x00a\x00"\x00}\x00',  # UTF-16 with a BOM
        b'{"address": "10.0.0.1:80\xc3"}',
        b"\x80",
    ],
)
async def test_a_body_that_is_not_utf8_is_400_naming_the_body(client: Client, store: Store, raw: bytes) -> None:
    r = await client.post("/backends", content=raw, headers={"content-type": "application/json"})
    problem = assert_problem(r, 400, "body")
    assert "UTF-8" in problem["detail"]
    assert await store.list_backends() == []


async def test_the_admins_own_address_and_redis_are_refused_as_backends(
    redis_url: str, namespace: str, store: Store
) -> None:
    port = free_port()
    config = admin_config(redis_url, namespace, listen_address=f"127.0.0.1:{port}", allowed_hosts=["testserver.local"])
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    refused: dict[str, Any] = {}
    async with AsyncTestClient(create_app(config)) as client:
        for label, address in [
            ("admin", f"127.0.0.1:{port}"),
            ("admin by name", f"localhost:{port}"),
            ("redis", f"127.0.0.1:{redis_port}"),
            ("metrics", "127.0.0.1:9100"),
            ("proxy (all interfaces)", "127.0.0.1:8080"),
        ]:
            refused[label] = await client.post("/backends", json={"address": address})
        allowed = await client.post("/backends", json={"address": f"127.0.0.1:{port + 1 if port < 65535 else 1}"})
    for label, r in refused.items():
        problem = assert_problem(r, 400, "address")
        assert "backend_deny" in problem["detail"], (label, problem)
    assert "admin.listen_address" in refused["admin"].json()["detail"]
    assert "redis.url" in refused["redis"].json()["detail"]
    assert allowed.status_code == 201, allowed.text
    assert len(await store.list_backends()) == 1


async def test_a_configured_network_is_refused_naming_the_setting(redis_url: str, namespace: str, store: Store) -> None:
    config = admin_config(redis_url, namespace)
    config.backend_deny.networks = ["169.254.0.0/16"]
    async with AsyncTestClient(create_app(config)) as client:
        r = await client.post("/backends", json={"address": "169.254.169.254:80"})
        problem = assert_problem(r, 400, "address")
        assert "backend_deny.networks[0]" in problem["detail"]
    assert await store.list_backends() == []
