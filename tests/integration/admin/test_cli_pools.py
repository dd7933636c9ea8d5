"""`gobalancer pools ...` / `gobalancer routes ...` against a real admin server (uvicorn, loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.store import Store
from tests.integration.admin.server import ServedAdmin, admin_config
from tests.integration.admin.test_cli import run

pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")


@pytest.fixture
def served(redis_url: str, namespace: str) -> Iterator[ServedAdmin]:
    with ServedAdmin(admin_config(redis_url, namespace)) as admin:
        yield admin


def test_pools_lifecycle(served: ServedAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--url", served.url)
    code, out, _ = run(capsys, "pools", "list", *url)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["POOL", "ALGORITHM", "BACKENDS", "USABLE", "HEALTH_CHECK", "OUTLIER"]
    assert lines[1].split() == ["default", "round_robin", "0", "0", "(config)", "(config)"]

    code, out, _ = run(capsys, "pools", "create", "api", "--algorithm", "ip_hash", "--hash-key", "header:X-User", *url)
    assert code == 0 and ["algorithm", "ip_hash"] in [line.split() for line in out.splitlines()]
    assert ["hash_key", "header:X-User"] in [line.split() for line in out.splitlines()]

    code, out, _ = run(capsys, "pools", "backends", "api", "add", "10.0.0.1:80", "--weight", "4", *url)
    assert code == 0 and out.splitlines()[1].split()[:2] == ["10.0.0.1:80", "4"]
    code, out, _ = run(capsys, "pools", "backends", "api", *url)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["10.0.0.1:80"]
    code, out, _ = run(capsys, "backends", "list", *url)
    assert out.strip() == "no backends"  # the default pool's
    code, out, _ = run(capsys, "pools", "backends", "api", "drain", "10.0.0.1:80", *url)
    assert code == 0 and "draining 10.0.0.1:80" in out

    code, out, _ = run(capsys, "pools", "list", *url)
    assert out.splitlines()[2].split()[:4] == ["api", "ip_hash", "1", "0"]
    code, out, _ = run(capsys, "pools", "get", "api", "--json", *url)
    assert code == 0 and json.loads(out)["backends"] == 1

    code, _, err = run(capsys, "pools", "delete", "api", *url)
    assert code == 1 and "in use: 1 backend(s)" in err and "(HTTP 409)" in err
    code, out, _ = run(capsys, "pools", "backends", "api", "remove", "10.0.0.1:80", *url)
    assert (code, out.strip()) == (0, "removed 10.0.0.1:80 from pool api")
    code, out, _ = run(capsys, "pools", "delete", "api", *url)
    assert (code, out.strip()) == (0, "deleted pool api")


def test_pool_errors_are_one_line(served: ServedAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--url", served.url)
    code, _, err = run(capsys, "pools", "get", "nope", *url)
    assert (code, err.strip()) == (1, "gobalancer: error: no pool nope (HTTP 404)")
    code, _, err = run(capsys, "pools", "create", "bad name", *url)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "(HTTP 400)" in err
    code, _, err = run(capsys, "pools", "delete", "default", *url)
    assert code == 1 and "cannot be deleted (HTTP 409)" in err
    code, _, err = run(capsys, "pools", "backends", "api", "add", *url)
    assert code == 1 and "give the backend's ADDRESS" in err


async def test_routes_get_and_set(
    served: ServedAdmin, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ("--url", served.url)
    code, out, _ = run(capsys, "routes", "get", *url)
    assert (code, out.splitlines()) == (0, ["no routes", "unmatched requests: 404; source: config"])

    assert run(capsys, "pools", "create", "api", *url)[0] == 0
    table = tmp_path / "routes.yaml"
    table.write_text(
        "routes:\n"
        "  - {name: api, host: api.example.com, path_prefix: /v1, pool: api, strip_prefix: true}\n"
        "  - {name: rest, pool: default, methods: [GET]}\n"
        "default_pool: default\n"
    )
    code, out, _ = run(capsys, "routes", "set", str(table), *url)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["#", "ROUTE", "HOST"]
    assert lines[1].split() == ["0", "api", "api.example.com", "/v1", "-", "-", "api", "yes", "-"]
    assert lines[2].split() == ["1", "rest", "*", "/", "GET", "-", "default", "no", "-"]
    assert lines[3] == "unmatched requests: default; source: store"
    stored = await store.get_routes()
    assert stored is not None and [r.name for r in stored.routes] == ["api", "rest"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "pool": "ghost"}]))  # JSON, a bare list
    code, _, err = run(capsys, "routes", "set", str(bad), *url)
    assert code == 1 and "routes[0].pool" in err and "(HTTP 422)" in err
    assert [r.name for r in (await store.get_routes() or stored).routes] == ["api", "rest"]  # untouched

    code, _, err = run(capsys, "routes", "set", str(tmp_path / "missing.yaml"), *url)
    assert code == 1 and "cannot read" in err
    (tmp_path / "odd.yaml").write_text("just a string\n")
    code, _, err = run(capsys, "routes", "set", str(tmp_path / "odd.yaml"), *url)
    assert code == 1 and "expected a list of routes" in err
