"""The route matcher (services/proxy/routes.py): each precedence rule, and the same answer as a slow,
obviously correct reference for random tables and requests (hypothesis); and its cost in bytecodes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.proxy import routes as routes_module
from services.proxy.routes import CACHED_HOSTS, LABEL_NAMES, UNMATCHED, Route, RouteTable, first_segment, has_header
from shared.config import RouteConfig

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n"


def route(name: str, **fields: Any) -> RouteConfig:
    fields.setdefault("pool", f"pool-{name}")
    return RouteConfig(name=name, **fields)


def name_of(table: RouteTable, host: str, path: str, method: str = "GET", head: bytes = HEAD) -> str | None:
    found = table.match(host.encode(), path.encode(), method.encode(), head)
    return None if found is None else found.name


# -- the slow reference ----------------------------------------------------------------------------------


def header_fields(head: bytes) -> list[tuple[str, str]]:
    lines = head.split(b"\r\n")[1:]
    fields = []
    for line in lines:
        if not line:
            break
        name, _, value = line.partition(b":")
        fields.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))
    return fields


def reference(
    routes: Sequence[RouteConfig], default_pool: str, host: bytes, path: bytes, method: bytes, head: bytes
) -> str | None:
    """Every route whose four conditions hold, the best by (host rank, longest prefix, list position)."""
    h, p, m = host.decode("latin-1"), path.decode("latin-1"), method.decode("latin-1")
    fields = header_fields(head)

    def host_rank(pattern: str) -> tuple[int, int] | None:  # None: no match
        if not pattern:
            return (2, 0)
        if pattern.startswith("*."):
            suffix = pattern[1:]  # ".example.com"
            return (1, -len(suffix)) if h.endswith(suffix) and len(h) > len(suffix) else None
        return (0, 0) if h == pattern else None

    def path_ok(prefix: str) -> bool:
        return prefix == "/" or p == prefix or p.startswith(prefix + "/")

    candidates = []
    for i, r in enumerate(routes):
        rank = host_rank(r.host)
        if rank is None or not path_ok(r.path_prefix):
            continue
        if r.methods and m not in r.methods:
            continue
        if not all((name, value) in fields for name, value in r.headers.items()):
            continue
        candidates.append((rank, -len(r.path_prefix), i))
    if not candidates:
        return UNMATCHED if default_pool else None
    return routes[min(candidates)[2]].name


# -- hypothesis: random tables and requests ---------------------------------------------------------------

PATTERNS = ["", "a.com", "b.a.com", "x.b.a.com", "*.a.com", "*.b.a.com", "*.com", "*.x.b.a.com", "[::1]"]
HOSTS = ["a.com", "b.a.com", "x.b.a.com", "y.x.b.a.com", "com", "other.org", "", ".a.com", "ba.com", "a.comx", "[::1]"]
SEGMENTS = ["a", "b", "ab", "c"]
METHODS = ["GET", "POST", "HEAD"]
HEADER_NAMES = ["x-a", "x-b"]

prefixes = st.lists(st.sampled_from(SEGMENTS), max_size=3).flatmap(
    lambda segments: st.sampled_from(["/" + "/".join(segments), "/" + "/".join(segments) + "/"])
)
routes = st.builds(
    lambda i, host, prefix, methods, headers, pool: RouteConfig(
        name=f"r{i}", pool=pool, host=host, path_prefix=prefix, methods=methods, headers=headers
    ),
    st.just(0),
    st.sampled_from(PATTERNS),
    prefixes,
    st.one_of(st.just([]), st.lists(st.sampled_from(METHODS), min_size=1, max_size=2, unique=True)),
    st.one_of(
        st.just({}),
        st.dictionaries(st.sampled_from(HEADER_NAMES), st.sampled_from(["1", "2"]), min_size=1, max_size=2),
    ),
    st.sampled_from(["p0", "p1", "p2"]),
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[RouteConfig], str]:
    drawn = draw(st.lists(routes, max_size=12))
    for i, r in enumerate(drawn):
        r.name = f"r{i}"
    return drawn, draw(st.sampled_from(["", "p0"]))


paths = st.one_of(
    st.lists(st.sampled_from([*SEGMENTS, ""]), max_size=4).flatmap(
        lambda segments: st.sampled_from(["/" + "/".join(segments), "/" + "/".join(segments) + "/"])
    ),
    st.sampled_from(["*", "", "/", "a/b", "//a", "/a//b", "/abc", "/a.b"]),
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    lines = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["X-A", "x-a", "X-a", "X-B", "x-b", "X-C", "Host"]),
                st.sampled_from(["1", "2", " 1 ", "1\t", "12", ""]),
            ),
            max_size=4,
        )
    )
    return b"GET / HTTP/1.1\r\n" + b"".join(f"{n}:{v}\r\n".encode() for n, v in lines) + b"\r\n"


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tables(),
    st.lists(st.tuples(st.sampled_from(HOSTS), paths, st.sampled_from(METHODS), heads()), min_size=1, max_size=8),
)
def test_the_matcher_agrees_with_the_reference(
    table: tuple[list[RouteConfig], str], requests: list[tuple[str, str, str, bytes]]
) -> None:
    specs, default_pool = table
    built = RouteTable.build(specs, default_pool)
    for host, path, method, head in requests * 2:  # twice: a wildcard table keeps the plans it made
        args = (host.encode(), path.encode(), method.encode(), head)
        found = built.match(*args)
        assert (None if found is None else found.name) == reference(specs, default_pool, *args), (host, path, method)
        if found is not None and found.name != UNMATCHED:
            assert found is built.routes[found.index] and found.pool == specs[found.index].pool


# -- each rule ---------------------------------------------------------------------------------------------


def test_an_exact_host_comes_before_a_wildcard_whatever_the_order_and_the_prefix() -> None:
    table = RouteTable.build(
        [route("wild", host="*.a.com", path_prefix="/api"), route("exact", host="b.a.com"), route("any")]
    )
    assert name_of(table, "b.a.com", "/api/x") == "exact"
    assert name_of(table, "c.a.com", "/api/x") == "wild"
    assert name_of(table, "c.a.com", "/other") == "any"


def test_the_longest_wildcard_suffix_comes_first_and_a_wildcard_is_never_the_apex() -> None:
    table = RouteTable.build([route("short", host="*.a.com"), route("long", host="*.b.a.com")])
    assert name_of(table, "x.b.a.com", "/") == "long"
    assert name_of(table, "x.y.b.a.com", "/") == "long"  # any depth
    assert name_of(table, "b.a.com", "/") == "short"  # b.a.com is not *.b.a.com, but is *.a.com
    assert name_of(table, "x.a.com", "/") == "short"
    assert name_of(table, "a.com", "/") is None
    assert name_of(table, "xa.com", "/") is None
    assert name_of(table, ".a.com", "/") is None


def test_host_less_routes_come_last() -> None:
    table = RouteTable.build([route("any-api", path_prefix="/api"), route("exact", host="a.com")])
    assert name_of(table, "a.com", "/api") == "exact"
    assert name_of(table, "b.com", "/api") == "any-api"
    assert name_of(table, "", "/api") == "any-api"  # no Host header at all


def test_a_host_whose_routes_do_not_match_falls_through_to_the_next_patterns() -> None:
    table = RouteTable.build(
        [
            route("exact-api", host="a.b.com", path_prefix="/api"),
            route("wild-img", host="*.b.com", path_prefix="/img"),
            route("any", path_prefix="/"),
        ]
    )
    assert name_of(table, "a.b.com", "/api/1") == "exact-api"
    assert name_of(table, "a.b.com", "/img/1") == "wild-img"
    assert name_of(table, "a.b.com", "/other") == "any"


def test_the_longest_prefix_comes_first_then_list_order() -> None:
    table = RouteTable.build(
        [
            route("root"),
            route("api", path_prefix="/api"),
            route("v1", path_prefix="/api/v1"),
            route("v1-beta", path_prefix="/api/v1/beta"),
            route("get", path_prefix="/x", methods=["GET"]),
            route("x", path_prefix="/x"),
        ]
    )
    assert name_of(table, "h", "/api/v1/beta/1") == "v1-beta"
    assert name_of(table, "h", "/api/v1/b") == "v1"
    assert name_of(table, "h", "/api/v2") == "api"
    assert name_of(table, "h", "/api") == "api"
    assert name_of(table, "h", "/ap") == "root"
    assert name_of(table, "h", "/x/1", "GET") == "get"
    assert name_of(table, "h", "/x/1", "POST") == "x"


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/api", True),
        ("/api/", True),
        ("/api/x", True),
        ("/api//x", True),
        ("/apix", False),
        ("/ap", False),
        ("/", False),
        ("/x/api", False),
        ("api", False),
        ("*", False),
        ("", False),
    ],
)
def test_a_prefix_matches_on_segment_boundaries(path: str, matches: bool) -> None:
    for prefix in ("/api", "/api/"):  # a trailing "/" is ignored
        table = RouteTable.build([route("api", path_prefix=prefix)])
        assert (name_of(table, "h", path) == "api") is matches


@pytest.mark.parametrize("path", ["/", "/x", "/x/y/", "*", "", "http://h/x"])
def test_the_root_prefix_matches_every_target(path: str) -> None:
    table = RouteTable.build([route("root"), route("api", path_prefix="/api")])
    assert name_of(table, "h", path) == "root"


def test_method_conditions() -> None:
    table = RouteTable.build([route("read", methods=["GET", "HEAD"]), route("write", methods=["POST"])])
    assert name_of(table, "h", "/", "GET") == "read"
    assert name_of(table, "h", "/", "HEAD") == "read"
    assert name_of(table, "h", "/", "POST") == "write"
    assert name_of(table, "h", "/", "DELETE") is None


def test_header_conditions_ignore_the_name_case_and_surrounding_spaces_but_not_the_value_case() -> None:
    table = RouteTable.build(
        [
            route("canary", path_prefix="/app", headers={"X-Canary": "on", "x-team": "a"}),
            route("app", path_prefix="/app"),
        ]
    )

    def pick(*fields: str) -> str | None:
        head = b"GET /app HTTP/1.1\r\nHost: h\r\n" + b"".join(f.encode() + b"\r\n" for f in fields) + b"\r\n"
        return name_of(table, "h", "/app", "GET", head)

    assert pick("x-canary: on", "X-TEAM:a") == "canary"
    assert pick("X-Canary:\ton ", "X-Team: a") == "canary"
    assert pick("X-Canary: other", "X-Canary: on", "X-Team: a") == "canary"  # any of its lines
    assert pick("X-Canary: ON", "X-Team: a") == "app"
    assert pick("X-Canary: on") == "app"  # both conditions
    assert pick("X-Canary-2: on", "X-Team: a") == "app"
    assert pick("X-Team: a", "Y-Canary: on") == "app"


def test_has_header_is_linear_in_the_head() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"x-a: 2\r\n" * 2000 + b"X-A: 1\r\n\r\n"
    assert has_header(head, head.lower(), b"x-a", b"1")
    assert not has_header(head, head.lower(), b"x-a", b"3")
    assert not has_header(b"x-a: 1\r\n\r\n", b"x-a: 1\r\n\r\n", b"x-a", b"1")  # the request line is no field


def test_unmatched_requests_go_to_the_default_pool_or_nowhere() -> None:
    specs = [route("api", host="a.com", path_prefix="/api")]
    assert RouteTable.build(specs).match(b"a.com", b"/", b"GET", HEAD) is None
    fallback = RouteTable.build(specs, "web").match(b"a.com", b"/", b"GET", HEAD)
    assert fallback is not None and (fallback.name, fallback.pool, fallback.label) == (
        UNMATCHED,
        "web",
        ("web", UNMATCHED),
    )


def test_without_routes_every_request_goes_to_the_default_pool() -> None:
    table = RouteTable.build([], "default")
    found = table.match(b"any", b"/x", b"GET", HEAD)
    assert found is not None and found.pool == "default" and found is table.unmatched
    assert RouteTable.build([], "").match(b"any", b"/x", b"GET", HEAD) is None


def test_a_route_carries_what_the_proxy_needs() -> None:
    table = RouteTable.build(
        [
            route("api", pool="backend", host="API.example.com", path_prefix="/api/", strip_prefix=True),
            route("web", pool="site", rewrite_host="www.internal:8080", strip_prefix=True),
        ]
    )
    api = table.match(b"api.example.com", b"/api/users", b"GET", HEAD)
    assert api is not None and (api.name, api.pool, api.index, api.prefix) == ("api", "backend", 0, b"/api")
    assert dict(zip(LABEL_NAMES, api.label, strict=True)) == {"pool": "backend", "route": "api"}
    assert api.strip_prefix and api.rewrite_host == b""
    assert [api.strip(t) for t in (b"/api/users?q=1", b"/api", b"/api?q", b"/api/")] == [
        b"/users?q=1",
        b"/",
        b"/?q",
        b"/",
    ]
    web = table.match(b"other", b"/x", b"GET", HEAD)
    assert web is not None and web.rewrite_host == b"www.internal:8080"
    assert not web.strip_prefix  # "/" has nothing to strip


def test_first_segment() -> None:
    assert [first_segment(p) for p in (b"/api/v1/x", b"/api", b"/", b"*", b"", b"//a", b"a/b")] == [
        b"/api",
        b"/api",
        b"/",
        b"*",
        b"",
        b"/",
        b"a",
    ]


def test_the_plans_of_other_hosts_are_kept_within_a_bound() -> None:
    table = RouteTable.build([route("wild", host="*.a.com"), route("exact", host="e.com"), route("any")])
    for n in range(CACHED_HOSTS * 2 + 10):
        host = f"h{n}.a.com" if n % 2 else f"h{n}.org"
        assert name_of(table, host, "/x") == ("wild" if n % 2 else "any")
        assert 0 < table.cached_hosts() <= CACHED_HOSTS
    assert name_of(table, "e.com", "/") == "exact"  # the configured hosts stay
    plain = RouteTable.build([route("exact", host="e.com"), route("any")])  # no wildcard: nothing to keep
    assert name_of(plain, "other.org", "/") == "any" and plain.cached_hosts() == 0


# -- the cost ----------------------------------------------------------------------------------------------


def table_100_routes_20_pools() -> list[RouteConfig]:
    """10 hosts with 6 prefixes each (/api and /api/v1 on each), 5 wildcard hosts with 4, 20 host-less
    routes (one pair with a header condition); 20 pools."""
    specs: list[RouteConfig] = []

    def add(**fields: Any) -> None:
        specs.append(RouteConfig(name=f"r{len(specs)}", pool=f"pool{len(specs) % 20}", **fields))

    for h in range(10):
        for prefix in ["/", "/api", "/api/v1", "/static", "/auth", "/admin"]:
            add(host=f"svc{h}.example.com", path_prefix=prefix)
    for h in range(5):
        for prefix in ["/", "/api", "/images", "/v2/users"]:
            add(host=f"*.tenant{h}.example.com", path_prefix=prefix)
    for prefix in ["/", "/health", "/a", "/b", "/c/d", "/e", "/f", "/g/h/i", "/j", "/k"]:
        add(path_prefix=prefix)
    for prefix in ["/l", "/m", "/n", "/o", "/p", "/q", "/r", "/s"]:
        add(path_prefix=prefix)
    add(path_prefix="/canary", headers={"X-Canary": "1"})
    add(path_prefix="/canary")
    assert len(specs) == 100 and len({s.pool for s in specs}) == 20
    return specs


def bytecodes(call: Callable[[], object], filename: str) -> int:
    """Bytecodes executed by ``call`` in frames of ``filename`` (bench/bytecodes.py's tracer, narrowed)."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename != filename:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count


# (host, path, bytecodes at most): the common cases, a first segment with longer prefixes under it
# (/api and /api/v1), and a header condition (the exact search).
BUDGET = [
    ("svc3.example.com", "/static/app.js", 32),
    ("svc3.example.com", "/index.html", 32),
    ("a.tenant2.example.com", "/api/x", 32),
    ("a.b.tenant2.example.com", "/", 32),
    ("other.org", "/health", 32),
    ("other.org", "/nothing/here", 36),
    ("svc3.example.com", "/api/users", 80),
    ("svc3.example.com", "/api/v1/users/42", 80),
    ("a.tenant2.example.com", "/v2/users/1", 80),
    ("other.org", "/canary/x", 300),
]


def test_the_cost_per_request_in_bytecodes(capsys: pytest.CaptureFixture[str]) -> None:
    """Run with -s to see the table (the figures of the report)."""
    specs = table_100_routes_20_pools()
    table = RouteTable.build(specs, "pool0")
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Canary: 1\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"
    lines = []
    for host, path, most in BUDGET:
        args = (host.encode(), path.encode(), b"GET", head)
        for _ in range(3):  # the plan of a new host is made on its first request
            found = table.match(*args)
        n = bytecodes(lambda args=args: table.match(*args), routes_module.__file__)  # type: ignore[misc]
        assert found is not None and found.name == reference(specs, "pool0", *args)
        lines.append(f"{n:5d} bytecodes  {host}{path} -> {found.name} ({found.prefix.decode()})")
        assert n <= most, lines[-1]
    with capsys.disabled():
        print("\nroutes.py bytecodes per match(), 100 routes / 20 pools:\n" + "\n".join(lines))


def test_a_route_object_is_small() -> None:
    assert not hasattr(Route("a", "p"), "__dict__")
