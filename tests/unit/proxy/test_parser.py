"""Byte-level tests of request/response head parsing and chunked framing."""

from __future__ import annotations

import pytest

from services.proxy.http.parser import (
    ChunkedDecoder,
    HttpError,
    check_incomplete_head,
    frame_chunk,
    parse_request_head,
    parse_response_head,
)


def req(raw: bytes, max_target: int = 8192):  # type: ignore[no-untyped-def]
    assert raw.endswith(b"\r\n\r\n")
    return parse_request_head(raw[:-4], max_target)


def test_simple_get() -> None:
    r = req(b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept:  */* \r\n\r\n")
    assert (r.method, r.target, r.minor) == (b"GET", b"/a?b=c", 1)
    assert r.headers == [(b"Host", b"example.com"), (b"Accept", b"*/*")]
    assert r.keep_alive and not r.has_body and r.content_length is None and r.host == b"example.com"


def test_http10_keep_alive_rules() -> None:
    assert not req(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert req(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive
    assert not req(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive


def test_content_length_and_chunked() -> None:
    assert req(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n").content_length == 12
    r = req(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n")
    assert r.chunked and r.te_codings == b"gzip, chunked" and r.content_length is None


def test_upgrade_needs_connection_token() -> None:
    assert req(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade
    assert not req(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n").upgrade


SMUGGLING = {
    "cl and te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    "duplicate cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
    "cl list": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n",
    "signed cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n",
    "hex cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\n",
    "empty cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n",
    "te not last chunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "te identity": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
    "te chunked twice": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    "te xchunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "te in 1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "space before colon": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 3\r\n\r\n",
    "tab before colon": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n",
    "obs fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n  folded\r\n\r\n",
    "bare cr in value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
    "bare lf line end": b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
    "nul in value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "nul in target": b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n",
    "no host in 1.1": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad version": b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    "lowercase version": b"GET / http/1.1\r\nHost: h\r\n\r\n",
    "double space": b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    "empty header name": b"GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n",
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_vectors_are_400(raw: bytes) -> None:
    with pytest.raises(HttpError) as err:
        req(raw)
    assert err.value.status == 400


def test_target_limit_is_414() -> None:
    with pytest.raises(HttpError) as err:
        req(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n", max_target=50)
    assert err.value.status == 414


def test_incomplete_head_limits() -> None:
    check_incomplete_head(b"GET / HTTP/1.1\r\nHost: h\r\n", 1000, 100)  # fine so far
    with pytest.raises(HttpError) as err:
        check_incomplete_head(b"GET /" + b"a" * 200, 1000, 100)
    assert err.value.status == 414
    with pytest.raises(HttpError) as err:
        check_incomplete_head(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000, 1000, 100)
    assert err.value.status == 431


def test_response_framing() -> None:
    r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5", b"GET")
    assert (r.status, r.content_length, r.chunked, r.keep_alive) == (200, 5, False, True)
    r = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", b"GET")
    assert r.chunked and r.content_length is None
    r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5", b"HEAD")
    assert r.content_length == 0
    r = parse_response_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5", b"GET")
    assert r.content_length == 0
    r = parse_response_head(b"HTTP/1.0 200 OK", b"GET")
    assert r.content_length is None and not r.keep_alive  # until close
    r = parse_response_head(b"HTTP/1.1 204", b"GET")
    assert r.reason == b"" and r.content_length == 0
    with pytest.raises(HttpError) as err:
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6", b"GET")
    assert err.value.status == 502
    with pytest.raises(HttpError):
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", b"GET")


def decode_all(raw: bytes, split: int | None = None) -> tuple[bytes, bytes]:
    d = ChunkedDecoder()
    out = b""
    parts = [raw] if split is None else [raw[i : i + split] for i in range(0, len(raw), split)]
    rest = b""
    for p in parts:
        if d.done:
            rest += p
            continue
        pieces, used = d.feed(p)
        out += b"".join(pieces)
        rest += p[used:]
    assert d.done
    return out, rest


@pytest.mark.parametrize("split", [None, 1, 2, 3, 7])
def test_chunked_decoding_any_split(split: int | None) -> None:
    raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: v\r\n\r\nGET /next"
    body, rest = decode_all(raw, split)
    assert body == b"hello world" and rest == b"GET /next"


BAD_CHUNKS = {
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "empty size": b"\r\nhello\r\n0\r\n\r\n",
    "not hex": b"g\r\nhello\r\n0\r\n\r\n",
    "too long": b"1" * 16 + b"\r\n",
    "bare lf": b"5\nhello\r\n0\r\n\r\n",
    "missing crlf after data": b"5\r\nhelloX\r\n0\r\n\r\n",
    "space in size": b"5 5\r\nhello\r\n0\r\n\r\n",
    "bad trailer": b"0\r\nbad trailer\r\n\r\n",
}


@pytest.mark.parametrize("raw", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_invalid_chunked_framing(raw: bytes) -> None:
    with pytest.raises(HttpError) as err:
        ChunkedDecoder().feed(raw)
    assert err.value.status == 400


def test_frame_chunk_roundtrip() -> None:
    framed = b"".join(frame_chunk(b"abc" * 10)) + b"0\r\n\r\n"
    assert decode_all(framed) == (b"abc" * 10, b"")


# -- request targets (RFC 9112 §3.2) --------------------------------------------------------------


def test_absolute_form_becomes_origin_form_with_the_targets_host() -> None:
    head = parse_request_head(b"GET http://Evil.example:8080/admin?x=1 HTTP/1.1\r\nHost: x", 8192)
    assert head.target == b"/admin?x=1"
    assert head.host == b"Evil.example:8080"
    assert head.host_rewritten and not [v for n, v in head.headers if n.lower() == b"host"]


def test_absolute_form_without_a_path_gets_a_slash() -> None:
    head = parse_request_head(b"GET https://a.example HTTP/1.1\r\nHost: a.example", 8192)
    assert head.target == b"/"
    head = parse_request_head(b"GET http://a.example?q HTTP/1.1\r\nHost: a.example", 8192)
    assert head.target == b"/?q"


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET admin HTTP/1.1", 400),
        (b"GET * HTTP/1.1", 400),
        (b"GET http://user:pw@a.example/ HTTP/1.1", 400),
        (b"GET ftp://a.example/ HTTP/1.1", 400),
        (b"CONNECT a.example:443 HTTP/1.1", 501),
        (b"GET http://a.example\\@b.example/ HTTP/1.1", 400),  # backslash in the authority
        (b"GET http://a\\b/ HTTP/1.1", 400),
        (b"GET /a#frag HTTP/1.1", 400),  # a fragment is never part of a request target
        (b"GET http://a.example/a#frag HTTP/1.1", 400),
        (b"GET /caf\xc3\xa9 HTTP/1.1", 400),  # non-ASCII must be percent-encoded
    ],
)
def test_invalid_targets_are_refused(line: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(line + b"\r\nHost: a.example", 8192)
    assert info.value.status == status


def test_asterisk_form_for_options() -> None:
    assert parse_request_head(b"OPTIONS * HTTP/1.1\r\nHost: a", 8192).target == b"*"


@pytest.mark.parametrize(
    "host",
    [b"a b", b"a/b", b"user@a", b"a,b", b"a, b", b"a:b:c", b"[::1", b"a\\b", b"a:port"],
)
def test_invalid_host_values_are_400(host: bytes) -> None:
    """RFC 9112 §3.2: a Host that is not uri-host [":" port] is a 400 (HAProxy refuses these too)."""
    with pytest.raises(HttpError) as info:
        parse_request_head(b"GET / HTTP/1.1\r\nHost: " + host, 8192)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "host", [b"a.example", b"a.example:8080", b"[::1]:80", b"10.0.0.1", b"", b"xn--bcher-kva.example"]
)
def test_valid_host_values(host: bytes) -> None:
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: " + host, 8192).host == host


def test_response_content_length_lists_and_repeats() -> None:
    """RFC 9110 §8.6: one value repeated is one length (sent on once); values that differ are a 502."""
    for fields in (b"Content-Length: 5, 5", b"Content-Length: 5\r\nContent-Length: 5"):
        r = parse_response_head(b"HTTP/1.1 200 OK\r\n" + fields, b"GET")
        assert r.content_length == 5 and r.length_field == b"5" and not r.plain_length
    with pytest.raises(HttpError) as err:
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6", b"GET")
    assert err.value.status == 502
    r = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5", b"HEAD")
    assert r.content_length == 0 and r.length_field == b"5"  # the GET body's length, passed on
    r = parse_response_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 0", b"GET")
    assert r.length_field is None
