"""Hostile and malformed HTTP/1.1 requests, each with what the proxy must answer.

``expect`` is the status the client must get (the connection is then closed, and nothing of the
request may reach a backend), ``200`` for controls that must pass through intact, or ``408`` for
heads that never complete (answered when ``timeout.header_read_sec`` runs out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Case(NamedTuple):
    name: str
    raw: bytes
    expect: int
    # Other answers that are right too (e.g. 405/501 for CONNECT); 200 only together with ``rewritten``,
    # which checks the head the backend received is unambiguous (e.g. absolute-form made origin-form).
    accept: tuple[int, ...] = ()
    rewritten: Callable[[bytes], bool] | None = None


def _req(head: str, body: bytes = b"", method: str = "POST", version: str = "1.1") -> bytes:
    return f"{method} / HTTP/{version}\r\nHost: x\r\n{head}\r\n".encode("latin-1") + body


CHUNKED = "Transfer-Encoding: chunked\r\n"

CORPUS: list[Case] = [
    # -- controls: must reach the backend, once, intact
    Case("get", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    Case("post content-length", _req("Content-Length: 5\r\n", b"hello"), 200),
    Case("post chunked", _req(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"), 200),
    Case("chunk extension", _req(CHUNKED, b"5;name=value\r\nhello\r\n0\r\n\r\n"), 200),
    Case("http/1.0 no host", b"GET / HTTP/1.0\r\n\r\n", 200),
    Case("asterisk-form options", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    Case("tab before value", b"GET / HTTP/1.1\r\nHost:\tx\r\n\r\n", 200),
    # -- CL.TE and TE.CL: both framings present
    Case("CL.TE", _req("Content-Length: 6\r\n" + CHUNKED, b"0\r\n\r\nG"), 400),
    Case("TE.CL", _req(CHUNKED + "Content-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"), 400),
    Case("CL.TE obfuscated TE", _req("Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n", b"1\r\nZ\r\nQ"), 400),
    # -- TE.TE: obfuscated Transfer-Encoding
    Case("TE twice, second bogus", _req(CHUNKED + "Transfer-Encoding: x\r\n", b"0\r\n\r\n"), 400),
    Case("TE chunked twice", _req(CHUNKED + CHUNKED, b"0\r\n\r\n"), 400),
    Case("TE xchunked", _req("Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400),
    Case("TE space before colon", _req("Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400),
    Case("TE tab before colon", _req("Transfer-Encoding\t: chunked\r\n", b"0\r\n\r\n"), 400),
    Case("TE vertical tab", _req("Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"), 400),
    Case("TE chunked, identity", _req("Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), 400),
    Case("TE identity", _req("Transfer-Encoding: identity\r\n", b"0\r\n\r\n"), 400),
    Case("TE quoted", _req('Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), 400),
    Case("TE empty list item", _req("Transfer-Encoding: ,chunked\r\n", b"0\r\n\r\n"), 400),
    Case("TE in HTTP/1.0", _req(CHUNKED, b"0\r\n\r\n", version="1.0"), 400),
    Case("TE folded", _req("Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), 400),
    # -- Content-Length: duplicate, list, negative, signed, hex, huge, empty
    Case("CL twice same", _req("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400),
    Case("CL twice differing", _req("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400),
    Case("CL list", _req("Content-Length: 5, 5\r\n", b"hello"), 400),
    Case("CL negative", _req("Content-Length: -1\r\n"), 400),
    Case("CL plus sign", _req("Content-Length: +5\r\n", b"hello"), 400),
    Case("CL hex", _req("Content-Length: 0x5\r\n", b"hello"), 400),
    Case("CL huge", _req("Content-Length: 99999999999999999999999999\r\n"), 400),
    Case("CL inner space", _req("Content-Length: 1 2\r\n", b"x" * 12), 400),
    Case("CL empty", _req("Content-Length:\r\n"), 400),
    Case("CL decimal point", _req("Content-Length: 5.0\r\n", b"hello"), 400),
    # -- chunked framing
    Case("chunk size negative", _req(CHUNKED, b"-1\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk size 0x", _req(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk size overflow", _req(CHUNKED, b"fffffffffffffffff5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk size empty", _req(CHUNKED, b"\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk size with junk", _req(CHUNKED, b"5 5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk data too long", _req(CHUNKED, b"5\r\nhelloXX\r\n0\r\n\r\n"), 400),
    Case("chunk bare LF", _req(CHUNKED, b"5\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk ext bare CR", _req(CHUNKED, b"5;a\rb\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk ext NUL", _req(CHUNKED, b"5;a=\x00\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk ext overlong", _req(CHUNKED, b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), 400),
    Case("bad trailer", _req(CHUNKED, b"0\r\nnot a field\r\n\r\n"), 400),
    Case("trailer obs-fold", _req(CHUNKED, b"0\r\nX: a\r\n b\r\n\r\n"), 400),
    # -- control characters and bad field lines
    Case("NUL in value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    Case("CR in value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    Case("bare LF between fields", b"GET / HTTP/1.1\r\nHost: x\nX: b\r\n\r\n", 400),
    Case("NUL in name", b"GET / HTTP/1.1\r\nHost: x\r\nX\x00Y: b\r\n\r\n", 400),
    Case("no colon", b"GET / HTTP/1.1\r\nHost: x\r\nJustAName\r\n\r\n", 400),
    Case("empty name", b"GET / HTTP/1.1\r\nHost: x\r\n: value\r\n\r\n", 400),
    Case("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    Case("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
    Case("leading obs-fold", b"GET / HTTP/1.1\r\n X: a\r\nHost: x\r\n\r\n", 400),
    Case("DEL in value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n", 400),
    # -- Host
    Case("missing host", b"GET / HTTP/1.1\r\n\r\n", 400),
    Case("two hosts", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    # -- request line and target forms
    Case(
        "absolute-form",
        b"GET http://evil.example/admin HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        accept=(200,),
        rewritten=lambda head: head.startswith(b"GET /admin ") and b"\r\nhost: evil.example\r\n" in head.lower(),
    ),
    Case("target without slash", b"GET admin HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    Case(
        "authority-form CONNECT",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        400,
        (405, 501),
    ),
    Case("double space", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    Case("trailing junk", b"GET / HTTP/1.1 x\r\nHost: x\r\n\r\n", 400),
    Case("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
    Case("HTTP/1.10", b"GET / HTTP/1.10\r\nHost: x\r\n\r\n", 400),
    Case("lowercase version", b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
    Case("tab separator", b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    Case("HTTP/0.9", b"GET /\r\n\r\n", 400),
    Case("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    Case("NUL in target", b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    # -- overlong
    Case("overlong target", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    Case("overlong header line", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000 + b"\r\n\r\n", 431),
    Case("too many headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n", 431),
    # -- heads that never end properly: a timeout
    Case("bare LF line endings", b"GET / HTTP/1.1\nHost: x\n\n", 408),
    Case("head never completes", b"GET / HTTP/1.1\r\nHost: x\r\n", 408),
    # -- second corpus (issue 15): quadratic validation, Host values, targets, names, Connection
    Case("32 KB of spaces then a CTL", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b" " * 32000 + b"\x01\r\n\r\n", 400),
    Case("trailer of spaces then a CTL", _req(CHUNKED, b"0\r\nX: " + b" " * 4000 + b"\x01\r\n\r\n"), 400),
    Case("host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    Case("host with a slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    Case("host with userinfo", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    Case("host list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400),
    Case("absolute-form backslash", b"GET http://a\\@evil/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    Case("fragment in target", b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    Case("non-ASCII target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    Case(
        "Connection names Host",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, Host\r\n\r\n",
        400,
        accept=(200,),
        rewritten=lambda head: b"\r\nhost: x\r\n" in head.lower(),
    ),
    Case(
        "underscore twin of X-Forwarded-For",
        b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n",
        400,
        accept=(200,),
        rewritten=lambda head: b"6.6.6.6" not in head and b"x_forwarded_for" not in head.lower(),
    ),
]
