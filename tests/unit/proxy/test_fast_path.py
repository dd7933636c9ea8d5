"""The fast path and the general path produce the same bytes and decisions on the same input.

Hypothesis builds request and response heads from a vocabulary that covers the fast path's edges
(plain and special field names, canonical and odd whitespace, valid and invalid Host values and
targets, HEAD, underscores, keep-alive lines). For every head the fast matcher accepts, the general
parser must accept it too and agree on every decision (method, target, host, framing, keep-alive),
and the head sent on must be byte for byte what the general path builds. The fast matcher may
decline anything: the general path then handles it, so declining is always safe.

Both implementations of the fast path are held to this: the C scan (``_fast.c``, built by ``make
install``) and its pure-Python twin (``fast.request_py`` / ``response_py``); and on every generated head,
and on random mutations of it, they give the same answer.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.proxy import outbox, stats
from services.proxy.http import fast
from services.proxy.http.headers import FAST_HEAD_NEW_TRACE, FAST_TRACE_VIA, client_response_head, upstream_request_head
from services.proxy.http.parser import HttpError, parse_request_head, parse_response_head
from services.proxy.http.upstream import VIA_CLOSE_END, VIA_END
from tests.conftest import in_ci

MAX_TARGET = 64
MAX_HEAD = 8192

RequestFn = Callable[[bytes, int, int], tuple[bytes, bytes] | None]
ResponseFn = Callable[[bytes, bytes], tuple[int, bytes, int, int] | None]
try:
    from services.proxy.http import _fast  # type: ignore[attr-defined]

    REQUESTS: dict[str, RequestFn] = {"python": fast.request_py, "c": _fast.request}
    TRACE_HEADS: dict[str, Callable[..., bytes]] = {"python": fast.trace_head_py, "c": _fast.trace_head}
    RESPONSES: dict[str, ResponseFn] = {"python": fast.response_py, "c": _fast.response}
except ImportError:  # not built: only where no C compiler is (never in CI, see below)
    REQUESTS, RESPONSES = {"python": fast.request_py}, {"python": fast.response_py}
    TRACE_HEADS = {"python": fast.trace_head_py}


def test_the_compiled_fast_path_is_built_and_in_use() -> None:
    """What ships is what is measured: ``make install`` builds the C scan and the proxy uses it (the
    bytecode budget and the benchmarks count it). Only a machine without a C compiler runs without."""
    if os.environ.get("GOBALANCER_PURE_PYTHON") == "1":  # the suite's second run (Makefile: PURE_PYTHON_TESTS)
        assert not fast.COMPILED and fast.request is fast.request_py and fast.response is fast.response_py
        assert outbox.Outbox is outbox.OutboxPy
        return
    if not in_ci() and "c" not in REQUESTS:
        pytest.skip("the C fast path is not built here (scripts/build-ext found no compiler)")
    assert "c" in REQUESTS and fast.COMPILED and fast.request is REQUESTS["c"] and fast.response is RESPONSES["c"]
    assert outbox.Outbox is fast.EXTENSION.Outbox


NAMES = [
    b"Accept",
    b"User-Agent",
    b"X-Custom",
    b"Cookie",
    b"accept-encoding",
    b"Host",
    b"host",
    b"HOST",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Keep-Alive",
    b"TE",
    b"Te",
    b"Test",
    b"Trailer",
    b"Upgrade",
    b"Proxy-Authorization",
    b"X-Forwarded-For",
    b"X-Forwarded-Proto",
    b"Forwarded",
    b"Via",
    b"X-Request-ID",
    b"traceparent",
    b"tracestate",
    b"Expect",
    b"X_Under",
    b"Bad Name",
    b"",
]
VALUES = [b"a", b"text/html, */*", b"1", b"x y", b"keep-alive", b"close", b"chunked", b"\xc3\xa9", b"a\tb", b""]
SEPARATORS = [b": ", b":", b":  ", b": \t", b" : "]
ENDS = [b"\r\n", b" \r\n", b"\t\r\n", b"\n"]
HOSTS = [b"example.com", b"a.example:8080", b"[::1]:80", b"a b", b"a,b", b"a/b", b"u@h", b"", b"h\\x"]
TARGETS = [b"/", b"/a?b=c", b"/p/q#frag", b"/caf\xc3\xa9", b"*", b"http://h/x", b"/" + b"a" * 70, b"/%20"]
METHODS = [b"GET", b"POST", b"DELETE", b"HEAD", b"OPTIONS", b"CONNECT", b"G@T"]


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(NAMES))
        value = draw(st.sampled_from(HOSTS if name.lower() == b"host" else VALUES))
        sep = draw(st.sampled_from(SEPARATORS[:1] * 6 + SEPARATORS))
        end = draw(st.sampled_from(ENDS[:1] * 6 + ENDS))
        lines.append(name + sep + value + end)
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), b"Host: " + draw(st.sampled_from(HOSTS)) + b"\r\n")
    return method + b" " + target + b" " + version + b"\r\n" + b"".join(lines) + b"\r\n"


@pytest.mark.parametrize("impl", REQUESTS)
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(raw=request_heads())
def test_a_fast_request_is_a_valid_request_and_is_forwarded_the_same(impl: str, raw: bytes) -> None:
    plain = REQUESTS[impl](raw, MAX_TARGET, MAX_HEAD)
    if plain is None:
        return  # the general path's: declining is always safe
    head, host = plain
    req = parse_request_head(raw[:-4], MAX_TARGET)  # raises if the fast path let through what is invalid
    assert req.minor == 1 and req.keep_alive and not req.has_body and not req.upgrade
    assert req.method != b"HEAD" and req.host == host and not req.host_rewritten
    assert req.request_id is None and req.traceparent is None and req.target.startswith(b"/")
    prefix = b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
    out = TRACE_HEADS[impl](head, prefix, host, b"abc", 42, FAST_TRACE_VIA)
    ids = out[-56:-7]  # (the new trace and span ids before "-01\r\n\r\n")
    assert re.fullmatch(rb"[0-9a-f]{32}-[0-9a-f]{16}", ids) and out == FAST_HEAD_NEW_TRACE % (
        head,
        prefix,
        host,
        b"abc",
        42,
        ids,
    )
    traceparent = b"00-" + ids + b"-01"
    general = upstream_request_head(req, "10.0.0.1", b"http", b"abc-2a", b"", False, traceparent, False)
    assert out == general


@pytest.mark.parametrize("impl", REQUESTS)
@settings(max_examples=500, deadline=None)
@given(raw=request_heads())
def test_what_the_general_path_refuses_the_fast_path_never_takes(impl: str, raw: bytes) -> None:
    try:
        parse_request_head(raw[:-4], MAX_TARGET)
    except HttpError:
        assert REQUESTS[impl](raw, MAX_TARGET, MAX_HEAD) is None


RESPONSE_NAMES = [
    b"Server",
    b"Date",
    b"Content-Type",
    b"X_Under",
    b"Via",
    b"Connection",
    b"connection",
    b"Keep-Alive",
    b"Transfer-Encoding",
    b"Content-Length",
    b"Proxy-Authenticate",
    b"Upgrade",
    b"Trailer",
    b"TE",
    b"Set-Cookie",
]
RESPONSE_VALUES = [b"nginx", b"keep-alive", b"close", b"5", b"0", b"5, 5", b"chunked", b"x y", b"", b"a\x01"]


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    status = draw(
        st.sampled_from([b"200 OK", b"404 Not Found", b"500 Oops", b"204 No Content", b"304 NM", b"101 S", b"2000 X"])
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(RESPONSE_NAMES))
        sep = draw(st.sampled_from(SEPARATORS[:1] * 6 + SEPARATORS))
        end = draw(st.sampled_from(ENDS[:1] * 6 + ENDS))
        lines.append(name + sep + draw(st.sampled_from(RESPONSE_VALUES)) + end)
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), b"Content-Length: 5\r\n")
    return version + b" " + status + b"\r\n" + b"".join(lines) + b"\r\n"


@pytest.mark.parametrize("impl", RESPONSES)
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(raw=response_heads(), body=st.sampled_from([b"hello", b"hel", b"", b"hello, again"]))
def test_a_fast_response_is_a_valid_response_and_is_relayed_the_same(impl: str, raw: bytes, body: bytes) -> None:
    data = raw + body
    plain = RESPONSES[impl](data, VIA_END)
    if plain is None:
        return
    status, out, missing, body_at = plain
    resp = parse_response_head(raw[:-4], b"GET")
    length = resp.content_length
    assert resp.status == status and length is not None and not resp.chunked
    assert resp.keep_alive and resp.minor == 1
    head = client_response_head(resp, 1, True, False, False)
    assert missing == length - len(body)
    if missing > 0:  # the head alone; the body from body_at
        assert out == head and data[body_at:] == body
    else:  # the head and the response's body, not a byte beyond it
        assert out == head + body[:length] and body_at == 0


def _mutations(data: bytes, draw: st.DataObject) -> bytes:
    """``data`` with a few bytes replaced, inserted or removed (CR, LF, NUL, space, colon, letters...)."""
    out = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        at = draw.draw(st.integers(0, len(out)))
        byte = draw.draw(st.sampled_from(b"\r\n\x00\t :_-/[]#\x7f\x80aA0HhTtCc"))
        kind = draw.draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "insert" or at == len(out):
            out.insert(at, byte)
        elif kind == "replace":
            out[at] = byte
        else:
            del out[at]
    return bytes(out)


@pytest.mark.skipif(len(REQUESTS) < 2, reason="the C fast path is not built here")
@settings(max_examples=4000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), raw=request_heads(), max_target=st.sampled_from([1, 8, 64, 4096]))
def test_the_c_and_python_request_scans_agree(data: st.DataObject, raw: bytes, max_target: int) -> None:
    for candidate in (raw, _mutations(raw, data)):
        for max_head in (len(candidate), len(candidate) - 1, MAX_HEAD):
            assert REQUESTS["c"](candidate, max_target, max_head) == fast.request_py(candidate, max_target, max_head)


@pytest.mark.skipif(len(REQUESTS) < 2, reason="the C fast path is not built here")
@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), raw=request_heads())
def test_the_c_and_python_routed_scans_agree(data: st.DataObject, raw: bytes) -> None:
    for candidate in (raw, _mutations(raw, data)):
        assert _fast.request_routed(candidate, MAX_TARGET, MAX_HEAD) == fast.request_routed_py(
            candidate, MAX_TARGET, MAX_HEAD
        )


@pytest.mark.parametrize("impl", ["python", "c"][: len(REQUESTS)])
def test_the_routed_scan_gives_the_host_name_and_the_path(impl: str) -> None:
    scan = fast.request_routed_py if impl == "python" else _fast.request_routed
    cases = {
        b"GET /a/b?x=1 HTTP/1.1\r\nHost: API.Example.com:8080\r\n\r\n": (b"api.example.com", b"/a/b", b"GET", b"/a"),
        b"POST / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n": (b"[::1]", b"/", b"POST", b"/"),
        b"PURGE /?q/r HTTP/1.1\r\nHost: h\r\n\r\n": (b"h", b"/", b"PURGE", b"/"),
        b"GE /p/?a?b HTTP/1.1\r\nHost: h:1\r\n\r\n": (b"h", b"/p/", b"GE", b"/p"),
        b"GET //x HTTP/1.1\r\nHost: h\r\n\r\n": (b"h", b"//x", b"GET", b"/"),
    }
    for raw, (name, path, method, segment) in cases.items():
        plain = scan(raw, MAX_TARGET, MAX_HEAD)
        assert plain is not None and plain[0] == raw[:-2] and plain[2:] == (name, path, method, segment)


@pytest.mark.skipif(len(RESPONSES) < 2, reason="the C fast path is not built here")
@settings(max_examples=4000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), raw=response_heads(), body=st.sampled_from([b"hello", b"hel", b"", b"hello, again"]))
def test_the_c_and_python_response_scans_agree(data: st.DataObject, raw: bytes, body: bytes) -> None:
    for candidate in (raw + body, _mutations(raw + body, data)):
        for via in (VIA_END, VIA_CLOSE_END):
            assert RESPONSES["c"](candidate, via) == fast.response_py(candidate, via)


@pytest.mark.parametrize("impl", REQUESTS)
def test_both_scans_take_a_plain_exchange(impl: str) -> None:
    assert REQUESTS[impl](b"GET /index.html HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n\r\n", 64, 8192) == (
        b"GET /index.html HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n",
        b"bench",
    )
    data = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    assert RESPONSES[impl](data, VIA_END) == (
        200,
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nVia: 1.1 gobalancer\r\n\r\nok",
        0,
        0,
    )


@pytest.mark.parametrize("impl", REQUESTS)
def test_the_limits_are_the_fast_paths_too(impl: str) -> None:
    head = b"GET /abcdefg HTTP/1.1\r\nHost: h\r\n\r\n"
    assert REQUESTS[impl](head, 8, len(head)) is not None
    assert REQUESTS[impl](head, 7, len(head)) is None  # the target is 8 bytes
    assert REQUESTS[impl](head, 8, len(head) - 1) is None  # the head is one byte over
    many = b"HTTP/1.1 200 OK\r\n" + b"Connection: keep-alive\r\n" * 9 + b"Content-Length: 0\r\n\r\n"
    assert RESPONSES[impl](many, VIA_END) is None  # more keep-alive lines than the C scan keeps places for
    assert RESPONSES[impl](b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n", VIA_END) is None


@pytest.mark.skipif(len(REQUESTS) < 2, reason="the C fast path is not built here")
def test_the_c_scans_refuse_what_is_not_bytes() -> None:
    """The proxy hands them ``bytes`` (uvloop's reads); anything else is a programming error, loudly."""
    with pytest.raises(TypeError):
        REQUESTS["c"](bytearray(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 64, 8192)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RESPONSES["c"](b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "via")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        REQUESTS["c"](b"GET / HTTP/1.1\r\n\r\n")  # type: ignore[call-arg]


@pytest.mark.parametrize("impl", REQUESTS)
def test_every_prefixed_special_name_is_declined_whatever_its_length(impl: str) -> None:
    """``Proxy-*`` and ``X-Forwarded-*`` names of every length (a C scan dispatching on the length must
    still check the prefix: a mutation fuzz once found ``Proxy-uthenticate`` relayed)."""
    for prefix in (b"Proxy-", b"X-Forwarded-"):
        for extra in range(0, 16):
            name = prefix + b"a" * extra
            req = b"GET / HTTP/1.1\r\nHost: h\r\n" + name + b": v\r\n\r\n"
            assert REQUESTS[impl](req, 64, 8192) is None, name
            if prefix == b"Proxy-":
                resp = b"HTTP/1.1 200 OK\r\n" + name + b": v\r\nContent-Length: 0\r\n\r\n"
                assert RESPONSES[impl](resp, VIA_END) is None, name
    control = b"GET / HTTP/1.1\r\nHost: h\r\nProxyx: v\r\n\r\n"
    assert REQUESTS[impl](control, 64, 8192) is not None


# -- the fast path's counters (stats.tally) ----------------------------------------------------------

TALLIES: dict[str, tuple[Callable[[], Any], Callable[..., None]]] = {"python": (stats.TallyPy, stats.tally_py)}
if len(REQUESTS) == 2:
    TALLIES["c"] = (_fast.Tally, _fast.tally)


def test_the_counters_in_use_are_the_compiled_ones_when_built() -> None:
    assert (stats.Tally, stats.tally) == TALLIES["c" if fast.COMPILED else "python"]
    if "c" in TALLIES:
        assert _fast.BUCKETS == stats.LATENCY_BUCKETS  # the C buckets are the histograms' bounds


RESPONSES_COUNTED = st.lists(
    st.tuples(
        st.integers(100, 599) | st.sampled_from([0, 99, 600, 999]),
        st.floats(0.0, 100.0) | st.sampled_from(list(stats.LATENCY_BUCKETS)),
        st.integers(0, 10**6),
        st.binary(max_size=64),
        st.booleans(),
    ),
    max_size=50,
)


@given(RESPONSES_COUNTED)
def test_the_c_and_python_counters_agree(responses: list[tuple[int, float, int, bytes, bool]]) -> None:
    seen = {}
    for impl, (make, tally) in TALLIES.items():
        backend, route = make(), make()
        for status, latency, size, out, routed in responses:
            tally(backend, route if routed else None, status, latency, size, out)
        seen[impl] = [(t.counts(), t.sum, t.request_bytes, t.response_bytes) for t in (backend, route)]
    expected = [0] * (len(stats.CLASS_NAMES) * stats.WHOLE_SLOTS)
    for status, latency, *_ in responses:
        expected[
            stats.CLASS_NAMES.index(stats.status_class(status)) * stats.WHOLE_SLOTS
            + bisect_left(stats.LATENCY_BUCKETS, latency)
        ] += 1
    assert seen["python"][0][0] == expected
    assert seen["python"][0][2:] == (sum(r[2] for r in responses), sum(len(r[3]) for r in responses))
    for impl in TALLIES:
        assert seen[impl] == seen["python"], impl


def test_the_counters_refuse_what_they_cannot_count() -> None:
    for make, tally in TALLIES.values():
        with pytest.raises((TypeError, AttributeError)):
            tally(None, None, 200, 0.1, 1, b"")
        if make is not stats.TallyPy:
            with pytest.raises(TypeError):
                tally(make(), None, 200, "0.1", 1, b"")


def test_new_trace_ids_are_random_and_never_zero() -> None:
    for make in TRACE_HEADS.values():
        seen = {make(b"GET / HTTP/1.1\r\nHost: a", b"\r\n", b"a", b"p", 1, FAST_TRACE_VIA)[-56:-7] for _ in range(1000)}
        assert len(seen) == 1000
        assert not any(i.startswith(b"0" * 32) or i.endswith(b"0" * 16) for i in seen)
    with pytest.raises(TypeError):
        TRACE_HEADS[max(TRACE_HEADS)](b"", b"", b"", b"", "1", b"")
