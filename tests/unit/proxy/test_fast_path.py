"""The fast path and the general path produce the same bytes and decisions on the same input.

Hypothesis builds request and response heads from a vocabulary that covers the fast path's edges
(plain and special field names, canonical and odd whitespace, valid and invalid Host values and
targets, HEAD, underscores, keep-alive lines). For every head the fast matcher accepts, the general
parser must accept it too and agree on every decision (method, target, host, framing, keep-alive),
and the head sent on must be byte for byte what the general path builds. The fast matcher may
decline anything: the general path then handles it, so declining is always safe.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.proxy.http.headers import FAST_HEAD_NEW_TRACE, client_response_head, upstream_request_head
from services.proxy.http.parser import (
    FAST_RESPONSE,
    STRIP_KEEP_ALIVE,
    HttpError,
    fast_request_matcher,
    parse_request_head,
    parse_response_head,
)
from services.proxy.http.upstream import VIA_END

MAX_TARGET = 64
FAST_REQUEST = fast_request_matcher(MAX_TARGET)

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
METHODS = [b"GET", b"POST", b"DELETE", b"HEAD", b"OPTIONS", b"G@T"]


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


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(request_heads())
def test_a_fast_request_is_a_valid_request_and_is_forwarded_the_same(raw: bytes) -> None:
    m = FAST_REQUEST(raw)
    if m is None:
        return  # the general path's: declining is always safe
    head, host = m.groups()
    req = parse_request_head(raw[:-4], MAX_TARGET)  # raises if the fast path let through what is invalid
    assert req.minor == 1 and req.keep_alive and not req.has_body and not req.upgrade
    assert req.method != b"HEAD" and req.host == host and not req.host_rewritten
    assert req.request_id is None and req.traceparent is None and req.target.startswith(b"/")
    ids = b"%032x-%016x" % (7, 9)
    prefix = b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
    fast = FAST_HEAD_NEW_TRACE % (head, prefix, host, b"abc", 42, ids)
    traceparent = b"00-" + ids + b"-01"
    general = upstream_request_head(req, "10.0.0.1", b"http", b"abc-2a", b"", False, traceparent, False)
    assert fast == general


@settings(max_examples=500, deadline=None)
@given(request_heads())
def test_what_the_general_path_refuses_the_fast_path_never_takes(raw: bytes) -> None:
    try:
        parse_request_head(raw[:-4], MAX_TARGET)
    except HttpError:
        assert FAST_REQUEST(raw) is None


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


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(response_heads())
def test_a_fast_response_is_a_valid_response_and_is_relayed_the_same(raw: bytes) -> None:
    m = FAST_RESPONSE(raw + b"hello")
    if m is None:
        return
    head, status, length, body = m.groups()
    assert body == b"hello"
    resp = parse_response_head(raw[:-4], b"GET")
    assert resp.status == int(status) and resp.content_length == int(length) and not resp.chunked
    assert resp.keep_alive and resp.minor == 1
    assert STRIP_KEEP_ALIVE(b"", head) + VIA_END == client_response_head(resp, 1, True, False, False)


def test_the_matchers_agree_on_a_plain_exchange() -> None:
    m = FAST_REQUEST(b"GET /index.html HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n\r\n")
    assert m is not None and m.group(2) == b"bench"
    r = FAST_RESPONSE(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
    assert r is not None and r.groups()[1:] == (b"200", b"2", b"ok")
    assert STRIP_KEEP_ALIVE(b"", r.group(1)) + VIA_END == (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nVia: 1.1 gobalancer\r\n\r\n"
    )
