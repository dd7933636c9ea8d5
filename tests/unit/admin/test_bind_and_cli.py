"""The open-bind refusal, the CLI's table and path helpers, and the self-contained schema page."""

from __future__ import annotations

import msgspec
import pytest

from services.admin.docs_page import render_page
from services.admin.main import bind_address
from shared.admin_cli import backend_path, table
from shared.cli import build_parser
from shared.config import Config


def with_admin(**admin: object) -> Config:
    config = Config()
    config.admin = msgspec.structs.replace(config.admin, **admin)
    return config


@pytest.mark.parametrize("listen", ["127.0.0.1:8081", "localhost:8081", "[::1]:8081", "127.0.0.2:9000"])
def test_loopback_binds_need_no_token(listen: str) -> None:
    host, port = bind_address(with_admin(listen_address=listen))
    assert port in (8081, 9000) and host in ("127.0.0.1", "localhost", "::1", "127.0.0.2")


@pytest.mark.parametrize("listen", [":8081", "0.0.0.0:8081", "10.1.2.3:8081", "admin.example.com:8081"])
def test_open_binds_are_refused_without_token(listen: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        bind_address(with_admin(listen_address=listen))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refusing" in err and listen in err


def test_open_binds_with_token_or_allow_insecure() -> None:
    assert bind_address(with_admin(listen_address=":8081", token="t")) == ("0.0.0.0", 8081)
    assert bind_address(with_admin(listen_address="10.1.2.3:8081", allow_insecure=True)) == ("10.1.2.3", 8081)


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    text = table(("NAME", "N", "OK"), [["a", 5, True], ["long-name", 12345, None]])
    assert text.splitlines() == [
        "NAME           N  OK",
        "a              5  yes",
        "long-name  12345  -",
    ]


def test_backend_path_encodes_ipv6() -> None:
    assert backend_path("[::1]:80") == "/backends/%5B%3A%3A1%5D%3A80"
    assert backend_path("10.0.0.1:80", "drain") == "/backends/10.0.0.1%3A80/drain"


def test_cli_parses_subcommands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOBALANCER_ADMIN_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("GOBALANCER_ADMIN_TOKEN", "from-env")
    args = build_parser().parse_args(["backends", "add", "10.0.0.1:80", "--weight", "3"])
    assert (args.admin_action, args.address, args.weight, args.url, args.token) == (
        "add",
        "10.0.0.1:80",
        3,
        "http://127.0.0.1:9999",
        "from-env",
    )
    args = build_parser().parse_args(["algorithm", "p2c", "--url", "http://x:1", "--token", "t"])
    assert (args.name, args.url, args.token) == ("p2c", "http://x:1", "t")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["backends", "add", "10.0.0.1:80", "--weight", "0"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["algorithm", "fastest"])


def test_schema_page_escapes_and_loads_nothing_remote() -> None:
    schema = {
        "openapi": "3.1.0",
        "info": {"title": "<API>", "version": "1"},
        "paths": {"/x/{a}": {"get": {"summary": "<script>alert(1)</script>", "responses": {"200": {}}}}},
    }
    page = render_page(schema, "/schema/openapi.json")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;API&gt;" in page
    assert "http://" not in page and "https://" not in page
