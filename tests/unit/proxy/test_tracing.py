"""W3C traceparent: validation, continuing a trace, starting one, and the head sent to the backend."""

from __future__ import annotations

import pytest

from services.proxy.http.headers import upstream_request_head
from services.proxy.http.parser import parse_request_head
from services.proxy.observability.tracing import continue_or_start, parse_traceparent

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_valid_header_parsed() -> None:
    assert parse_traceparent(VALID) == (b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f067aa0ba902b7", 1)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        VALID + b"-extra",  # version 00 has exactly four fields
        b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",  # misplaced dash
        b"zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_invalid_headers_rejected(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_future_version_with_more_fields_is_read_as_00() -> None:
    assert parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what") is not None
    assert parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x") is None


def test_valid_incoming_trace_is_continued_with_a_new_span() -> None:
    trace = continue_or_start(VALID, 1.0)
    assert trace.trace_id == b"4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace.parent_id == b"00f067aa0ba902b7" and trace.span_id != trace.parent_id
    assert trace.tracestate_kept and trace.sampled
    header = trace.header()
    assert parse_traceparent(header) == (trace.trace_id, trace.span_id, 1)
    # an unsampled caller stays unsampled
    assert not continue_or_start(VALID[:-2] + b"00", 1.0).sampled


@pytest.mark.parametrize("incoming", [None, b"garbage"])
def test_absent_or_invalid_starts_a_new_trace(incoming: bytes | None) -> None:
    a, b = continue_or_start(incoming, 1.0), continue_or_start(incoming, 1.0)
    assert a.trace_id != b.trace_id and a.parent_id is None and not a.tracestate_kept
    assert parse_traceparent(a.header()) is not None and a.sampled
    assert not continue_or_start(incoming, 0.0).sampled


def _head(extra: bytes) -> bytes:
    raw = (b"GET / HTTP/1.1\r\nHost: h\r\n" + extra).removesuffix(b"\r\n")
    req = parse_request_head(raw, 8192)
    trace = continue_or_start(req.traceparent, 1.0)
    return upstream_request_head(req, "1.2.3.4", b"http", b"rid", b"", False, trace.header(), trace.tracestate_kept)


def test_head_replaces_traceparent_and_keeps_tracestate_of_a_continued_trace() -> None:
    out = _head(b"traceparent: " + VALID + b"\r\ntracestate: congo=t61rcWkgMzE\r\n")
    assert out.count(b"traceparent:") == 1 and VALID not in out
    assert b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-" in out
    assert b"tracestate: congo=t61rcWkgMzE\r\n" in out


def test_head_drops_tracestate_of_a_replaced_trace() -> None:
    out = _head(b"traceparent: 00-xyz\r\ntracestate: congo=t61rcWkgMzE\r\n")
    assert out.count(b"traceparent:") == 1 and b"00-xyz" not in out and b"tracestate" not in out


def test_two_traceparent_headers_are_invalid() -> None:
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + VALID + b"\r\ntraceparent: " + VALID, 8192)
    assert req.traceparent == b"" and parse_traceparent(req.traceparent) is None
