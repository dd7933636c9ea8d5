"""`gobalancer backends ...` / `gobalancer algorithm ...` against a real admin server (uvicorn, loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli import main
from tests.integration.admin.server import ServedAdmin, admin_config

# The in-process server logs with structlog (stdout by default): kept out of the CLI's stdout.
pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")


@pytest.fixture
def served(redis_url: str, namespace: str) -> Iterator[ServedAdmin]:
    with ServedAdmin(admin_config(redis_url, namespace)) as admin:
        yield admin


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_backends_lifecycle_with_tables(served: ServedAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--url", served.url)
    code, out, _ = run(capsys, "backends", "list", *url)
    assert (code, out.strip()) == (0, "no backends")

    code, out, _ = run(capsys, "backends", "add", "10.0.0.1:8080", "--weight", "5", *url)
    assert code == 0 and "10.0.0.1:8080" in out
    assert run(capsys, "backends", "add", "[::1]:9000", *url)[0] == 0

    code, out, _ = run(capsys, "backends", "list", *url)
    lines = out.rstrip("\n").splitlines()
    header = ["ADDRESS", "WEIGHT", "STATE", "HEALTH", "ALIVE", "CONNS", "ORIGIN", "EJECTED", "OVERRIDE"]
    assert lines[0].split() == header
    assert lines[1].split() == ["10.0.0.1:8080", "5", "enabled", "unknown", "no", "0", "api", "no", "-"]
    assert lines[2].split() == ["[::1]:9000", "1", "enabled", "unknown", "no", "0", "api", "no", "-"]
    # Aligned: every column starts at the same offset on every line.
    starts = [lines[0].index("WEIGHT"), lines[0].index("STATE")]
    assert lines[1][starts[1] :].startswith("enabled") and lines[2][starts[1] :].startswith("enabled")
    assert lines[1][: starts[1]].rstrip().endswith("5")

    code, out, _ = run(capsys, "backends", "weight", "[::1]:9000", "7", *url)
    assert code == 0 and out.splitlines()[1].split()[:2] == ["[::1]:9000", "7"]

    code, out, _ = run(capsys, "backends", "drain", "10.0.0.1:8080", *url)
    assert code == 0 and "draining 10.0.0.1:8080: 0 request(s) still in flight" in out
    assert out.splitlines()[1].split()[2] == "draining"

    code, out, _ = run(capsys, "backends", "enable", "10.0.0.1:8080", *url)
    assert code == 0 and out.splitlines()[1].split()[2] == "enabled"

    code, out, _ = run(capsys, "backends", "remove", "10.0.0.1:8080", *url)
    assert (code, out.strip()) == (0, "removed 10.0.0.1:8080")
    code, out, _ = run(capsys, "backends", "list", "--json", *url)
    assert code == 0 and '"address": "[::1]:9000"' in out and "10.0.0.1" not in out


def test_errors_are_one_line_and_nonzero(served: ServedAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--url", served.url)
    code, out, err = run(capsys, "backends", "remove", "10.0.0.9:80", *url)
    assert code == 1 and out == ""
    assert err.strip() == "gobalancer: error: backend 10.0.0.9:80 not found (HTTP 404)"
    code, _, err = run(capsys, "backends", "add", "not-an-address", *url)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "must be host:port (HTTP 400)" in err
    assert run(capsys, "backends", "add", "10.0.0.1:80", *url)[0] == 0
    code, _, err = run(capsys, "backends", "add", "10.0.0.1:80", *url)
    assert code == 1 and "already exists (HTTP 409)" in err


def test_unreachable_api(capsys: pytest.CaptureFixture[str]) -> None:
    from shared.redis_server import free_port

    code, _, err = run(capsys, "backends", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and err.startswith("gobalancer: error: cannot reach the admin API at http://127.0.0.1:")
    assert len(err.strip().splitlines()) == 1


def test_algorithm_show_and_switch(served: ServedAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "algorithm", "--url", served.url)
    assert code == 0 and out.splitlines()[1].split() == ["algorithm", "round_robin"]
    code, out, _ = run(capsys, "algorithm", "ip_hash", "--hash-key", "cookie:sid", "--url", served.url)
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert ["algorithm", "ip_hash"] in rows and ["hash_key", "cookie:sid"] in rows and ["changed", "yes"] in rows
    code, _, err = run(capsys, "algorithm", "ip_hash", "--hash-key", "nose", "--url", served.url)
    assert code == 1 and "hash_key" in err


def test_url_and_token_from_environment(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with ServedAdmin(admin_config(redis_url, namespace, token="tok-123")) as admin:
        monkeypatch.setenv("GOBALANCER_ADMIN_URL", admin.url)
        monkeypatch.delenv("GOBALANCER_ADMIN_TOKEN", raising=False)
        code, _, err = run(capsys, "backends", "add", "10.0.0.1:80")
        assert code == 1 and "(HTTP 401)" in err
        monkeypatch.setenv("GOBALANCER_ADMIN_TOKEN", "tok-123")
        assert run(capsys, "backends", "add", "10.0.0.1:80")[0] == 0
        monkeypatch.delenv("GOBALANCER_ADMIN_TOKEN")
        assert run(capsys, "backends", "remove", "10.0.0.1:80", "--token", "tok-123")[0] == 0


def test_rate_limits_get_set_clear(served: ServedAdmin, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = ("--url", served.url)
    code, out, _ = run(capsys, "rate-limits", "get", *url)
    assert code == 0 and out.splitlines()[-1] == "source: config (version 0)"
    rules = tmp_path / "limits.yaml"
    rules.write_text("rate_limits:\n  rules:\n    - {name: per-client, rate: 100/s, burst: 5}\n")
    code, out, _ = run(capsys, "rate-limits", "set", str(rules), *url)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["RULE", "APPLIES_TO", "KEY", "RATE", "BURST", "REDIS_DOWN"]
    assert lines[1].split() == ["per-client", "all", "client_ip", "100/s", "5", "open"]
    assert lines[-1].startswith("source: store (version ") and lines[-1].endswith(", changed")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x", "rate": "5/day"}]')
    code, out, err = run(capsys, "rate-limits", "set", str(bad), *url)
    assert code == 1 and out == "" and "rules[0].rate" in err and "(HTTP 400)" in err
    code, out, _ = run(capsys, "rate-limits", "get", "--json", *url)
    assert code == 0 and '"name": "per-client"' in out
    code, out, _ = run(capsys, "rate-limits", "clear", *url)
    assert code == 0 and out.splitlines()[-1].startswith("source: config") and out.rstrip().endswith(", changed")
    code, _, err = run(capsys, "rate-limits", "set", str(tmp_path / "missing.yaml"), *url)
    assert code == 1 and err.startswith("gobalancer: error: cannot read ")
