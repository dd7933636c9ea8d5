"""Head rewriting, the proxy's own error responses and the retry budget."""

from __future__ import annotations

import pytest

from services.proxy.http.errors import error_response
from services.proxy.http.headers import client_response_head, upstream_request_head
from services.proxy.http.parser import parse_request_head, parse_response_head
from services.proxy.stats import RetryBudget


def test_upstream_head_drops_hop_by_hop_and_adds_forwarding() -> None:
    req = parse_request_head(
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
        b"Transfer-Encoding: chunked\r\nTE: trailers\r\nProxy-Connection: x\r\nX-Forwarded-For: 1.2.3.4\r\nX-Keep: y",
        8192,
    )
    head = upstream_request_head(req, "10.0.0.9", b"https", b"rid-1", b"", tunnel=False)
    assert head.startswith(b"POST /x HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert b"Host: a.example" in lines and b"X-Keep: y" in lines
    assert b"X-Forwarded-For: 1.2.3.4, 10.0.0.9" in lines and b"X-Forwarded-Proto: https" in lines
    assert b"X-Forwarded-Host: a.example" in lines and b"X-Request-ID: rid-1" in lines
    assert b"Via: 1.1 gobalancer" in lines and b"Transfer-Encoding: chunked" in lines
    for hop in (b"Connection", b"X-Hop", b"Keep-Alive", b"TE", b"Proxy-Connection"):
        assert not any(line.startswith(hop + b":") for line in lines), hop


def test_upgrade_kept_only_when_tunnelling() -> None:
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket", 8192)
    assert b"Upgrade: websocket" in upstream_request_head(req, "1.1.1.1", b"http", b"r", b"", tunnel=True)
    assert b"Upgrade" not in upstream_request_head(req, "1.1.1.1", b"http", b"r", b"", tunnel=False)


def test_client_head_framing() -> None:
    resp = parse_response_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nX-A: b", b"GET"
    )
    head = client_response_head(resp, 1, keep_alive=True, rechunk=True, tunnel=False)
    assert head == b"HTTP/1.1 200 OK\r\nX-A: b\r\nVia: 1.1 gobalancer\r\nTransfer-Encoding: chunked\r\n\r\n"
    head = client_response_head(resp, 0, keep_alive=False, rechunk=False, tunnel=False)
    assert head == b"HTTP/1.0 200 OK\r\nX-A: b\r\nVia: 1.1 gobalancer\r\nConnection: close\r\n\r\n"
    resp = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3", b"GET")
    head = client_response_head(resp, 0, keep_alive=True, rechunk=False, tunnel=False)
    assert head == b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nVia: 1.1 gobalancer\r\nConnection: keep-alive\r\n\r\n"


@pytest.mark.parametrize("connection", [b"keep-alive", b"X-Custom"])  # fast path, then the general one
def test_client_head_drops_hop_by_hop(connection: bytes) -> None:
    resp = parse_response_head(
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: %s\r\nX-Custom: 1\r\nContent-Length: 2\r\n"
        b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nVia: 1.1 backend\r\nx-keep: ok" % connection,
        b"GET",
    )
    head = client_response_head(resp, 1, keep_alive=True, rechunk=False, tunnel=False)
    lines = head.split(b"\r\n")
    for hop in (b"keep-alive", b"connection", b"proxy-authenticate", b"trailer", b"upgrade"):
        assert not any(line.lower().startswith(hop + b":") for line in lines), hop
    assert (b"X-Custom: 1" in lines) == (connection == b"keep-alive")
    assert b"Content-Length: 2" in lines and b"x-keep: ok" in lines
    assert b"Via: 1.1 backend" in lines and b"Via: 1.1 gobalancer" in lines


def test_error_response_carries_request_id() -> None:
    raw = error_response(504, b"rid-9", close=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert b"X-Request-ID: rid-9" in head and b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head and b"rid-9" in body


def test_retry_budget() -> None:
    budget = RetryBudget(0.2, reserve=1.0, cap=2.0)
    assert budget.withdraw(0) and not budget.withdraw(0)
    assert not budget.withdraw(4)  # 4 requests at 20 % fund 0.8 retries
    assert budget.withdraw(5) and not budget.withdraw(5)  # the 5th completes one
    budget.credit(105)
    assert budget.tokens == 2.0  # capped


def test_a_connection_token_naming_content_length_does_not_drop_the_framing() -> None:
    from services.proxy.http.headers import client_response_head
    from services.proxy.http.parser import parse_response_head

    resp = parse_response_head(
        b"HTTP/1.1 200 OK\r\nConnection: content-length, x-a\r\nContent-Length: 5\r\nX-A: 1", b"GET"
    )
    head = client_response_head(resp, 1, keep_alive=True, rechunk=False, tunnel=False)
    assert b"\r\nContent-Length: 5\r\n" in head
    assert b"X-A" not in head


def test_a_connection_token_cannot_remove_host_or_framing_from_a_request() -> None:
    """``Connection: close, Host`` must not make the proxy forward an HTTP/1.1 request without Host."""
    req = parse_request_head(
        b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\nConnection: close, Host, Content-Length", 8192
    )
    lines = upstream_request_head(req, "1.1.1.1", b"http", b"r", b"", tunnel=False).split(b"\r\n")
    assert b"Host: a.example" in lines and b"Content-Length: 2" in lines


def test_header_names_with_underscores_are_dropped_by_default() -> None:
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\nMy_Header: 1", 8192)
    head = upstream_request_head(req, "1.1.1.1", b"http", b"r", b"", tunnel=False)
    assert b"6.6.6.6" not in head and b"My_Header" not in head
    assert b"X-Forwarded-For: 1.1.1.1\r\n" in head
    kept = upstream_request_head(req, "1.1.1.1", b"http", b"r", b"", tunnel=False, keep_underscores=True)
    assert b"My_Header: 1\r\n" in kept


@pytest.mark.parametrize("fields", [b"Content-Length: 5, 5", b"Content-Length: 5\r\nContent-Length: 5"])
def test_a_repeated_response_content_length_goes_on_as_one_value(fields: bytes) -> None:
    resp = parse_response_head(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\nX-A: 1", b"GET")
    head = client_response_head(resp, 1, keep_alive=True, rechunk=False, tunnel=False)
    assert head.count(b"Content-Length") == 1 and b"\r\nContent-Length: 5\r\n" in head


@pytest.mark.parametrize("status", [b"204 No Content", b"100 Continue", b"103 Early Hints"])
def test_no_content_length_is_added_to_1xx_and_204(status: bytes) -> None:
    resp = parse_response_head(b"HTTP/1.1 " + status + b"\r\nConnection: x\r\nX-A: 1", b"GET")
    head = client_response_head(resp, 1, keep_alive=True, rechunk=False, tunnel=False)
    assert b"content-length" not in head.lower()


def test_head_response_keeps_the_backends_content_length() -> None:
    resp = parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: x\r\nContent-Length: 42", b"HEAD")
    head = client_response_head(resp, 1, keep_alive=True, rechunk=False, tunnel=False)
    assert b"\r\nContent-Length: 42\r\n" in head
