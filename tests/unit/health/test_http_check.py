"""The HTTP probe's request and incremental response judging, with byte fixtures."""

from __future__ import annotations

import pytest

from services.health.http_check import ResponseCheck, build_request
from services.health.state import Verdict
from shared.config import parse_status_ranges

OK_RANGES = parse_status_ranges("200-399")


def feed_all(check: ResponseCheck, data: bytes, *, step: int = 0) -> Verdict | None:
    if not step:
        return check.feed(data)
    verdict = None
    for i in range(0, len(data), step):
        verdict = check.feed(data[i : i + step])
        if verdict is not None:
            return verdict
    return verdict


def response(status: str, body: bytes = b"", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def test_request_bytes() -> None:
    assert build_request("GET", "/healthz", "api.internal:8080") == (
        b"GET /healthz HTTP/1.1\r\nHost: api.internal:8080\r\nUser-Agent: gobalancer-health/1\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize("step", [0, 1, 7])
def test_200_passes_as_soon_as_the_head_is_complete(step: int) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    check = ResponseCheck(OK_RANGES)
    assert feed_all(check, head, step=step) == Verdict(True, "HTTP 200")  # the body is never awaited


@pytest.mark.parametrize(
    ("status", "ranges", "ok"),
    [
        ("500 Internal Server Error", "200-399", False),
        ("503 Service Unavailable", "200-399", False),
        ("404 Not Found", "200-399", False),
        ("404 Not Found", "200-299,404", True),
        ("301 Moved Permanently", "200-399", True),
        ("301 Moved Permanently", "200", False),
        ("204 No Content", "200-299", True),
    ],
)
def test_status_ranges(status: str, ranges: str, ok: bool) -> None:
    verdict = ResponseCheck(parse_status_ranges(ranges)).feed(response(status))
    assert verdict is not None and verdict.ok is ok
    assert verdict.reason.startswith(f"HTTP {status[:3]}")


@pytest.mark.parametrize("step", [0, 1, 5])
def test_body_substring_found_across_chunks(step: int) -> None:
    check = ResponseCheck(OK_RANGES, b'"status":"ok"')
    verdict = feed_all(check, response("200 OK", b'{"db":"fine","status":"ok","x":1}'), step=step)
    assert verdict == Verdict(True, "HTTP 200, body matched")


def test_body_substring_in_a_chunked_body() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nall g\r\n4\r\nood!\r\n0\r\n\r\n"
    for step in (0, 1, 3):
        assert feed_all(ResponseCheck(OK_RANGES, b"all good"), data, step=step) == Verdict(
            True, "HTTP 200, body matched"
        )


def test_body_without_the_substring_fails_when_the_message_is_complete() -> None:
    check = ResponseCheck(OK_RANGES, b"ready")
    assert check.feed(response("200 OK", b"starting")) == Verdict(False, "HTTP 200, body lacks 'ready'")


def test_body_incomplete_waits_then_fails_at_eof() -> None:
    check = ResponseCheck(OK_RANGES, b"ready")
    assert check.feed(b"HTTP/1.1 200 OK\r\n\r\nstill start") is None  # no length: body runs to EOF
    assert check.feed(b"ing") is None
    assert check.eof() == Verdict(False, "HTTP 200, body lacks 'ready'")


def test_body_until_eof_containing_the_substring_passes() -> None:
    check = ResponseCheck(OK_RANGES, b"ready")
    assert check.feed(b"HTTP/1.1 200 OK\r\n\r\nnot yet") is None
    assert check.feed(b"... ready") == Verdict(True, "HTTP 200, body matched")


def test_only_the_first_max_body_bytes_are_searched() -> None:
    check = ResponseCheck(OK_RANGES, b"needle", max_body=100)
    verdict = check.feed(response("200 OK", b"x" * 200 + b"needle"))
    assert verdict == Verdict(False, "HTTP 200, body lacks 'needle'")


def test_bad_status_fails_before_any_body_check() -> None:
    assert ResponseCheck(OK_RANGES, b"ok").feed(response("500 Oops", b"ok")) == Verdict(False, "HTTP 500")


def test_closed_without_a_response() -> None:
    assert ResponseCheck(OK_RANGES).eof() == Verdict(False, "connection closed after no response")
    check = ResponseCheck(OK_RANGES)
    assert check.feed(b"HTTP/1.1 200 OK\r\nContent-") is None
    assert check.eof() == Verdict(False, "connection closed after an incomplete response head")


def test_garbage_is_an_invalid_response() -> None:
    verdict = ResponseCheck(OK_RANGES).feed(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert verdict is not None and not verdict.ok and verdict.reason.startswith("invalid HTTP response")


def test_oversized_head_fails() -> None:
    check = ResponseCheck(OK_RANGES, max_head=1024)
    assert check.feed(b"HTTP/1.1 200 OK\r\n") is None
    verdict = check.feed(b"X-Filler: " + b"a" * 2000 + b"\r\n")
    assert verdict == Verdict(False, "response head larger than 1024 bytes")


def test_interim_100_continue_is_skipped() -> None:
    check = ResponseCheck(parse_status_ranges("200"))
    assert check.feed(b"HTTP/1.1 100 Continue\r\n\r\n") is None
    assert check.feed(response("200 OK")) == Verdict(True, "HTTP 200")


def test_head_requests_are_judged_on_the_head_alone() -> None:
    check = ResponseCheck(OK_RANGES, b"never searched", head=True)
    assert check.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n") == Verdict(True, "HTTP 200")


def test_the_verdict_is_sticky() -> None:
    check = ResponseCheck(OK_RANGES)
    first = check.feed(response("503 Busy"))
    assert first == Verdict(False, "HTTP 503")
    assert check.feed(b"more bytes") == first
    assert check.eof() == first
