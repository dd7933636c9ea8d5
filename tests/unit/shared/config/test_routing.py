"""Pools, routes and listeners in the config (issue 20): the one-pool files keep working, every mistake is
refused naming the pool or route and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cli import main as cli_main
from shared.config import Config, ConfigError, load_config
from shared.config.routing import RouteTableError, check_route_table, normalize_host_pattern, precedence
from shared.config.schema import RouteConfig


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, env or {})


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    prefix = f"{tmp_path / 'c.yaml'}: "
    assert message.startswith(prefix) and "\n" not in message
    return message.removeprefix(prefix)


POOLS = """
pools:
  api: {backends: [{address: "10.0.0.1:80"}], algorithm: least_connections}
  web: {health_check: {type: http, path: /healthz}}
"""


def test_a_one_pool_file_is_the_default_pool(tmp_path: Path) -> None:
    config = load(tmp_path, "algorithm: weighted\nbackends: [{address: 'a:1', weight: 2}]\n")
    pools = config.pool_configs()
    assert list(pools) == ["default"]
    default = pools["default"]
    assert default.algorithm == "weighted" and [b.address for b in default.backends] == ["a:1"]
    assert default.health_check is config.health_check and default.balancing is config.balancing
    assert config.routes == [] and config.unmatched_pool == "default"


def test_pools_routes_and_listeners(tmp_path: Path) -> None:
    text = (
        POOLS
        + """
routes:
  - {name: api, host: API.Example.com, path_prefix: /v1/, pool: api, methods: [GET], headers: {X-Canary: "1"}}
  - {name: web, host: "*.example.com", pool: web, strip_prefix: true, rewrite_host: "web.internal:8080"}
default_pool: web
listeners:
  - {listen_address: "127.0.0.1:9443", mode: tcp, pool: api}
  - {listen_address: ":8081"}
"""
    )
    config = load(tmp_path, text)
    assert list(config.pool_configs()) == ["default", "api", "web"]
    assert config.pools["api"].algorithm == "least_connections"
    assert config.pools["web"].health_check.path == "/healthz"
    api, web = config.routes
    assert (api.host, api.path_prefix, api.methods, api.headers) == (
        "api.example.com",
        "/v1",
        ["GET"],
        {"x-canary": "1"},
    )
    assert (web.host, web.path_prefix, web.strip_prefix, web.rewrite_host) == (
        "*.example.com",
        "/",
        True,
        "web.internal:8080",
    )
    assert config.unmatched_pool == "web"
    assert [(x.listen_address, x.mode, x.pool) for x in config.listeners] == [
        ("127.0.0.1:9443", "tcp", "api"),
        (":8081", "http", ""),
    ]


def test_with_routes_an_unmatched_request_is_a_404_unless_a_default_pool_is_named(tmp_path: Path) -> None:
    assert load(tmp_path, "routes: [{name: a, pool: default, path_prefix: /a}]\n").unmatched_pool == ""


def test_routes_from_the_environment() -> None:
    env = {
        "GOBALANCER_ROUTES": '[{"name": "a", "pool": "default", "host": "A.example"}]',
        "GOBALANCER_DEFAULT_POOL": "x",
    }
    with pytest.raises(ConfigError, match=r"^GOBALANCER_DEFAULT_POOL \(environment\): default_pool: pool 'x' does not"):
        load_config(None, env)
    del env["GOBALANCER_DEFAULT_POOL"]
    assert load_config(None, env).routes[0].host == "a.example"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # pools
        ("pools: {api: {algorithm: fastest}}\n", "pools.api.algorithm: invalid value 'fastest' (expected one of:"),
        ("pools: {a: {}, api: {backends: [{address: x}]}}\n", "pools.api.backends[0].address: address 'x' must be"),
        (
            "pools: {api: {backends: [{address: 'a:1'}, {address: 'a:1'}]}}\n",
            "pools.api.backends[1]: duplicate address a:1",
        ),
        ("pools: {api: {health_check: {interval_sec: 0}}}\n", "pools.api.health_check.interval_sec: must be > 0"),
        ("pools: {api: {health_check: {lease_ttl_sec: 1}}}\n", "pools.api.health_check.lease_ttl_sec: unknown field"),
        ("pools: {api: {weight: 1}}\n", "pools.api.weight: unknown field (allowed: backends, algorithm, balancing,"),
        ("pools: {default: {}}\n", "pools.default: the pool named default is the top-level backends"),
        ("pools: {'a b': {}}\n", "pools: pool name 'a b' must be 1-63 letters, digits"),
        # routes: their own fields
        ("routes: [{pool: default}]\n", "routes[0]: Object missing required field `name`"),
        ("routes: [{name: 'a/b', pool: default}]\n", "routes[0].name: route name 'a/b' must be"),
        ("routes: [{name: a, pool: default, host: 'a.example.com:80'}]\n", "routes[0].host: route 'a': 'a.example"),
        ("routes: [{name: a, pool: default, host: '*'}]\n", "routes[0].host: route 'a': '*' is not a host name"),
        ("routes: [{name: a, pool: default, host: 'a.*.com'}]\n", "routes[0].host: route 'a': 'a.*.com' is not"),
        ("routes: [{name: a, pool: default, host: '*example.com'}]\n", "routes[0].host: route 'a': '*example.com'"),
        ("routes: [{name: a, pool: default, host: 'a..com'}]\n", "routes[0].host: route 'a': 'a..com' is not"),
        ("routes: [{name: a, pool: default, path_prefix: api}]\n", "routes[0].path_prefix: route 'a': 'api' must be"),
        ("routes: [{name: a, pool: default, path_prefix: '/a?b'}]\n", "routes[0].path_prefix: route 'a': '/a?b'"),
        ("routes: [{name: a, pool: default, methods: [get]}]\n", "routes[0].methods: route 'a': 'get' is not an"),
        ("routes: [{name: a, pool: default, methods: [GET, GET]}]\n", "routes[0].methods: route 'a': GET is listed"),
        ("routes: [{name: a, pool: default, headers: {'a b': x}}]\n", "routes[0].headers: route 'a': 'a b' is not"),
        ("routes: [{name: a, pool: default, headers: {Host: x}}]\n", "routes[0].headers: route 'a': 'Host' cannot"),
        (
            "routes: [{name: a, pool: default, headers: {X: 1, x: 2}}]\n",
            "routes[0].headers.X: expected `str`, got `int`",
        ),
        (
            "routes: [{name: a, pool: default, headers: {X: '1', x: '2'}}]\n",
            "routes[0].headers: route 'a': 'x' is listed twice (header names ignore case)",
        ),
        ("routes: [{name: a, pool: default, headers: {X: ' 1'}}]\n", "routes[0].headers: route 'a': the value of"),
        ("routes: [{name: a, pool: default, rewrite_host: 'a b'}]\n", "routes[0].rewrite_host: route 'a': 'a b' is"),
        # routes: the table
        ("routes: [{name: a, pool: nope}]\n", "routes[0].pool: route 'a': pool 'nope' does not exist (pools: default)"),
        (
            POOLS + "routes: [{name: a, pool: api}, {name: a, pool: web, host: x}]\n",
            "routes[1].name: duplicate route name 'a' (also routes[0])",
        ),
        ("default_pool: nope\n", "default_pool: pool 'nope' does not exist (pools: default)"),
        # listeners
        ("listeners: [{mode: tcp, listen_address: ':9000'}]\n", "listeners[0].pool: a tcp listener sends every"),
        ("listeners: [{listen_address: ':9000', pool: x}]\n", "listeners[0].pool: pool 'x' does not exist"),
        ("listeners: [{listen_address: '9000'}]\n", "listeners[0].listen_address: address '9000' must be host:port"),
        ("listeners: [{pool: default}]\n", "listeners[0]: Object missing required field `listen_address`"),
        ("listeners: [{listen_address: '127.0.0.1:8080'}]\n", "listeners[0].listen_address: 127.0.0.1:8080 is also"),
        (
            "listeners: [{listen_address: ':9000'}, {listen_address: '10.0.0.1:9000'}]\n",
            "listeners[1].listen_address: 10.0.0.1:9000 is also listeners[0]'s",
        ),
        (
            "mode: tcp\nlisteners: [{listen_address: ':9000', pool: default}]\nroutes: [{name: a, pool: default}]\n",
            "routes: no listener uses them (mode is tcp, and no http listener without a pool)",
        ),
    ],
)
def test_mistakes_name_the_pool_or_route_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text).startswith(expected)


SHADOWED = [
    # (routes, the route refused) — the same host and prefix, and the earlier one has no condition the later lacks
    ("[{name: a, pool: default}, {name: b, pool: default}]", "routes[1]: route 'b' can never match: route 'a'"),
    ("[{name: a, pool: default, path_prefix: /x/}, {name: b, pool: default, path_prefix: /x}]", "routes[1]"),
    ("[{name: a, pool: default, host: A.com}, {name: b, pool: default, host: a.com, methods: [GET]}]", "routes[1]"),
    ("[{name: a, pool: default, methods: [GET, POST]}, {name: b, pool: default, methods: [POST]}]", "routes[1]"),
    (
        "[{name: a, pool: default, headers: {x: '1'}}, {name: b, pool: default, headers: {X: '1', y: '2'}}]",
        "routes[1]",
    ),
    (
        "[{name: z, pool: default, host: '*.a.com'}, {name: a, pool: default, path_prefix: /p},"
        " {name: b, pool: default, path_prefix: /p/, methods: [GET], headers: {k: v}}]",
        "routes[2]: route 'b' can never match: route 'a' (routes[1]) comes first with the same host '(any)' and "
        "path_prefix '/p'",
    ),
]
NOT_SHADOWED = [
    # a longer prefix is tried first whatever the order; other hosts; a condition the earlier route adds
    "[{name: a, pool: default, path_prefix: /api}, {name: b, pool: default, path_prefix: /api/v1}]",
    "[{name: a, pool: default}, {name: b, pool: default, host: a.com}]",
    "[{name: a, pool: default, host: '*.a.com'}, {name: b, pool: default, host: 'x.a.com'}]",
    "[{name: a, pool: default, host: '*.a.com'}, {name: b, pool: default, host: '*.b.a.com'}]",
    "[{name: a, pool: default, methods: [GET]}, {name: b, pool: default}]",
    "[{name: a, pool: default, methods: [GET]}, {name: b, pool: default, methods: [GET, POST]}]",
    "[{name: a, pool: default, headers: {x: '1'}}, {name: b, pool: default}]",
    "[{name: a, pool: default, headers: {x: '1'}}, {name: b, pool: default, headers: {x: '2'}}]",
    "[{name: a, pool: default, path_prefix: /apix}, {name: b, pool: default, path_prefix: /api}]",
]


@pytest.mark.parametrize(("routes", "expected"), SHADOWED)
def test_a_route_that_can_never_match_is_refused(tmp_path: Path, routes: str, expected: str) -> None:
    assert error(tmp_path, f"routes: {routes}\n").startswith(expected)


@pytest.mark.parametrize("routes", NOT_SHADOWED)
def test_a_route_that_can_match_is_kept(tmp_path: Path, routes: str) -> None:
    assert len(load(tmp_path, f"routes: {routes}\n").routes) == 2


def test_the_table_check_is_usable_on_its_own() -> None:
    """The admin checks a new table against the pools in the store the same way."""
    routes = [RouteConfig(name="a", pool="api"), RouteConfig(name="b", pool="web", path_prefix="/b/")]
    check_route_table(routes, {"default", "api", "web"})
    with pytest.raises(RouteTableError) as info:
        check_route_table(routes, {"default", "api"})
    assert (info.value.field, str(info.value)) == ("routes[1].pool", "routes[1].pool: " + info.value.problem)
    with pytest.raises(ValueError, match=r"^path_prefix: route 'x': 'x' must be a path"):
        RouteConfig(name="x", pool="p", path_prefix="x")


@pytest.mark.parametrize(
    ("pattern", "normal"),
    [
        ("", ""),
        ("A.Example.COM", "a.example.com"),
        ("*.Example.com", "*.example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("[::1]", "[::1]"),
        ("localhost", "localhost"),
        ("*.com", "*.com"),
        ("x_y.example", "x_y.example"),
    ],
)
def test_host_patterns(pattern: str, normal: str) -> None:
    assert normalize_host_pattern(pattern) == normal


@pytest.mark.parametrize("pattern", ["*", "*.", ".a.com", "a.com.", "a.*.com", "**.a.com", "a com", "-a.com", "a:80"])
def test_invalid_host_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="is not a host name"):
        normalize_host_pattern(pattern)


def test_precedence_and_check_config_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = """
routes:
  - {name: any-root, pool: default}
  - {name: any-api, pool: default, path_prefix: /api}
  - {name: wild, pool: default, host: "*.example.com"}
  - {name: wild-deep, pool: default, host: "*.eu.example.com"}
  - {name: exact, pool: default, host: www.example.com, path_prefix: /a}
  - {name: exact-get, pool: default, host: www.example.com, path_prefix: /a/b, methods: [GET]}
  - {name: exact-canary, pool: default, host: www.example.com, path_prefix: /a/b, headers: {X-Canary: "1"}}
"""
    config = load(tmp_path, text)
    order = [config.routes[i].name for i in precedence(config.routes)]
    assert order == ["exact-get", "exact-canary", "exact", "wild-deep", "wild", "any-api", "any-root"]
    monkeypatch.delenv("GOBALANCER_ADMIN_TOKEN", raising=False)
    assert cli_main(["check-config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.endswith(
        "# Routes in the order they are tried (the first that matches wins):\n"
        "#   1. routes[5] exact-get: host www.example.com; path_prefix /a/b; methods GET -> pool default\n"
        "#   2. routes[6] exact-canary: host www.example.com; path_prefix /a/b; x-canary: 1 -> pool default\n"
        "#   3. routes[4] exact: host www.example.com; path_prefix /a -> pool default\n"
        "#   4. routes[3] wild-deep: host *.eu.example.com; path_prefix / -> pool default\n"
        "#   5. routes[2] wild: host *.example.com; path_prefix / -> pool default\n"
        "#   6. routes[1] any-api: any host; path_prefix /api -> pool default\n"
        "#   7. routes[0] any-root: any host; path_prefix / -> pool default\n"
        "#   no route matches -> 404\n"
    )


def test_check_config_refuses_a_shadowed_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("routes: [{name: a, pool: default, path_prefix: /x}, {name: b, pool: default, path_prefix: /x/}]\n")
    assert cli_main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {path}: routes[1]: route 'b' can never match: route 'a' (routes[0])")
