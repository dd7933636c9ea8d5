"""The dashboard page at `/` and its assets, plus the request totals it reads (`/replicas`, `/metrics`)."""

from __future__ import annotations

import re
import time
from importlib import resources

from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.admin.app import create_app
from shared.models import Backend, ReplicaInfo
from shared.store import Store
from tests.integration.admin.server import admin_config
from tests.integration.admin.test_backends_api import assert_problem
from tests.integration.admin.test_system_api import metric

Client = AsyncTestClient[Litestar]
ASSET_REF = re.compile(r'(?:src|href)="([^"]*)"')
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'`)]*", re.I)


def packaged(name: str) -> str:
    return (resources.files("services.admin") / "static" / name).read_text()


def local_refs(html: str) -> list[str]:
    """Every src/href of the page; each must be relative to the page (or a data: URL)."""
    refs = ASSET_REF.findall(html)
    for ref in refs:
        assert not ref.startswith(("/", "//")) and "://" not in ref, f"{ref} is not a relative, local reference"
    return refs


async def test_the_page_is_html_with_only_local_assets(client: Client) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache" and r.headers["etag"].startswith('"')
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    html = r.text
    assert '<div id="backends">' in html and '<canvas id="chart"' in html
    assert '<table id="routes">' in html and '<table id="rate-limits">' in html
    refs = local_refs(html)
    assets = sorted(ref.split("?")[0] for ref in refs if ref.startswith("static/"))
    assert assets == ["static/dashboard.css", "static/dashboard.js"]
    # Asset URLs carry their content hash, so a new release is fetched despite the long cache lifetime.
    assert all(re.search(r"\?v=[0-9a-f]{20}$", ref) for ref in refs if ref.startswith("static/"))


async def test_nothing_is_loaded_from_another_host(client: Client) -> None:
    html = (await client.get("/")).text
    for ref in local_refs(html):
        if ref.startswith("static/"):
            body = (await client.get("/" + ref)).text
            assert not URL.findall(body), f"{ref} names URLs: {URL.findall(body)}"
            assert "@import" not in body and "import(" not in body
    # The page itself has no absolute URL anywhere (not only in src/href).
    assert not URL.findall(html), URL.findall(html)


async def test_assets_have_content_types_and_long_caching(client: Client) -> None:
    html = (await client.get("/")).text
    expected = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
    for ref in ASSET_REF.findall(html):
        if not ref.startswith("static/"):
            continue
        name = ref.split("?")[0].removeprefix("static/")
        r = await client.get("/" + ref)
        assert r.status_code == 200
        assert r.headers["content-type"] == expected[name]
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.text == packaged(name), "the served asset is the one shipped in the package"
        assert ref.endswith("?v=" + r.headers["etag"].strip('"'))
        again = await client.get("/" + ref, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    page = await client.get("/")
    assert (await client.get("/", headers={"If-None-Match": page.headers["etag"]})).status_code == 304


async def test_unknown_assets_are_404_problems(client: Client) -> None:
    for path in ["/static/nope.js", "/static/dashboard.html", "/static/..%2Fapp.py", "/static/__init__.py"]:
        assert_problem(await client.get(path), 404)


async def test_the_page_is_not_part_of_the_api_schema(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


async def test_page_stays_open_with_protect_reads_but_data_needs_the_token(redis_url: str, namespace: str) -> None:
    app = create_app(admin_config(redis_url, namespace, token="tok", protect_reads=True))
    async with AsyncTestClient(app) as client:
        page = await client.get("/")
        assert page.status_code == 200
        for ref in ASSET_REF.findall(page.text):
            if ref.startswith("static/"):
                assert (await client.get("/" + ref)).status_code == 200
        for path in ["/backends", "/replicas", "/metrics", "/events"]:
            assert_problem(await client.get(path), 401)
        assert (await client.get("/backends", headers={"Authorization": "Bearer tok"})).status_code == 200
        # Only safe methods are open on the page's routes.
        assert (await client.post("/")).status_code in (401, 405)


async def push_totals(store: Store, replica_id: str, totals: dict[str, int]) -> None:
    info = ReplicaInfo(id=replica_id, service="proxy", started_at=time.time(), heartbeat_at=0.0, host="h", pid=1)
    await store.push_counters(info, 1, {}, {}, ttl=30.0, force_absolute=True, totals=totals)


async def test_replicas_and_metrics_show_request_totals(client: Client, store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.1:80"))
    await push_totals(store, "proxy-a", {"10.0.0.1:80|2xx": 7, "10.0.0.1:80|5xx": 1})
    await push_totals(store, "proxy-b", {"10.0.0.1:80|2xx": 3, "[::1]:81|error": 2})
    items = {i["id"]: i for i in (await client.get("/replicas?service=proxy")).json()}
    assert items["proxy-a"]["totals"] == {"10.0.0.1:80|2xx": 7, "10.0.0.1:80|5xx": 1}
    assert items["proxy-b"]["totals"] == {"10.0.0.1:80|2xx": 3, "[::1]:81|error": 2}
    text = (await client.get("/metrics")).text
    assert "# TYPE gobalancer_cluster_backend_requests_total counter" in text
    assert metric(text, "gobalancer_cluster_backend_requests_total", 'backend="10.0.0.1:80",class="2xx"') == 10
    assert metric(text, "gobalancer_cluster_backend_requests_total", 'backend="10.0.0.1:80",class="5xx"') == 1
    assert metric(text, "gobalancer_cluster_backend_requests_total", 'backend="[::1]:81",class="error"') == 2
    labels = 'backend="10.0.0.1:80",class="2xx",replica="proxy-b"'
    assert metric(text, "gobalancer_cluster_replica_requests_total", labels) == 3
    # A replica that goes away takes its totals with it.
    await store.deregister("proxy-b")
    text = (await client.get("/metrics")).text
    assert metric(text, "gobalancer_cluster_backend_requests_total", 'backend="10.0.0.1:80",class="2xx"') == 7
    assert 'replica="proxy-b"' not in text


async def test_event_streams_are_capped(client: Client) -> None:
    from services.admin.context import context_of

    context_of(client.app.state).snapshot.max_streams = 0
    response = await client.get("/events")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "too many open event streams" in response.json()["detail"]
