"""Rewriting heads between client and backend: hop-by-hop removal, X-Forwarded-*, Via, X-Request-ID."""

from __future__ import annotations

import itertools
import os
import re

from services.proxy.http.parser import RequestHead, ResponseHead

# Hop-by-hop (RFC 9110 §7.6.1) plus the framing headers the proxy sets itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"content-length",
    }
)
# A request's Content-Length stays where it was (the body is forwarded unchanged); Transfer-Encoding is
# sent again by the proxy after its own lines.
_REQUEST_HOP = _HOP_BY_HOP - {b"content-length"}
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"via"})
VIA = b"1.1 gobalancer"
_TRACEPARENT = frozenset({b"traceparent"})
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})

REQUEST_IDS = itertools.count(1)
REQUEST_ID_PREFIX = os.urandom(6).hex().encode()


def new_request_id() -> bytes:
    """Unique per process and run; cheaper than a uuid4 per request. (The fast path formats the same
    ``REQUEST_ID_PREFIX``-counter form inline.)"""
    return b"%s-%x" % (REQUEST_ID_PREFIX, next(REQUEST_IDS))


# Connection options may name any field, but never what the proxy itself needs to deliver the
# message: Host and the framing (RFC 9110 §7.6.1 lets a proxy keep them; dropping them would forward
# an HTTP/1.1 request without a Host, or a body without its length).
_PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding"})
_HOST_FIELD = frozenset({b"host"})


def upstream_request_head(
    req: RequestHead,
    client_ip: str,
    proto: bytes,
    request_id: bytes,
    upstream_host: bytes,
    tunnel: bool,
    traceparent: bytes | None = None,
    keep_tracestate: bool = True,
    keep_underscores: bool = False,
    trusted_peer: bool = False,
    host_override: bytes = b"",
) -> bytes:
    """The head sent to the backend (always HTTP/1.1, keep-alive unless tunnelling): the general path.

    The client's field lines stay in their order (Host and Content-Length included) less the
    hop-by-hop ones, the forwarding fields the proxy sets itself, and (unless ``keep_underscores``)
    names with an underscore, which CGI-style backends would read as the header with a dash (nginx
    drops them too); then the proxy's own lines. On the fast path's requests this gives the same
    bytes as the fast path's ``FAST_HEAD_NEW_TRACE`` (tests/unit/proxy/test_fast_path.py).

    ``traceparent``: the proxy's own value, replacing the client's (None: the client's passes as is);
    ``keep_tracestate`` False drops the client's ``tracestate`` (it belonged to a trace not continued).
    ``trusted_peer``: the peer is a trusted proxy (``proxy.trusted_proxies``): its X-Forwarded-For is
    kept and the peer appended; from anyone else an incoming X-Forwarded-For is dropped (it could name
    anybody), and the header holds the peer alone.
    ``host_override``: the Host sent instead of the client's (a route's ``rewrite_host``); X-Forwarded-Host
    keeps the client's.
    """
    drop = req.connection_tokens - _PROTECTED if req.connection_tokens else req.connection_tokens
    if host_override:
        drop = drop | _HOST_FIELD
    if traceparent is not None:
        drop = drop | (_TRACE_HEADERS if not keep_tracestate else _TRACEPARENT)
    out = [b"%s %s HTTP/1.1\r\n" % (req.method, req.target)]
    xff: bytes | None = None
    via: bytes | None = None
    upgrade_value: bytes | None = None
    for name, value in req.headers:
        n = name.lower()
        if n in _REQUEST_HOP or n in drop or (b"_" in n and not keep_underscores):
            if n == b"upgrade":
                upgrade_value = value
            continue
        if n in _FORWARDED:
            if n == b"x-forwarded-for":
                if trusted_peer:
                    xff = value if xff is None else xff + b", " + value
            elif n == b"via":
                via = value if via is None else via + b", " + value
            continue  # x-forwarded-proto/host and x-request-id: the proxy's own values
        out.append(b"%s: %s\r\n" % (name, value))
    if host_override:
        out.append(b"Host: %s\r\n" % host_override)
    elif req.host is None:
        out.append(b"Host: %s\r\n" % upstream_host)
    elif req.host_rewritten:
        out.append(b"Host: %s\r\n" % req.host)
    ip = client_ip.encode()
    out.append(b"X-Forwarded-For: %s\r\n" % (xff + b", " + ip if xff else ip))
    out.append(b"X-Forwarded-Proto: %s\r\n" % proto)
    if req.host is not None:
        out.append(b"X-Forwarded-Host: %s\r\n" % req.host)
    out.append(b"X-Request-ID: %s\r\n" % request_id)
    out.append(b"Via: %s\r\n" % (via + b", " + VIA if via else VIA))
    if req.chunked:
        out.append(b"Transfer-Encoding: %s\r\n" % req.te_codings)
    if traceparent is not None:
        out.append(b"traceparent: %s\r\n" % traceparent)
    if tunnel and upgrade_value is not None:
        out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade_value)
    out.append(b"\r\n")
    return b"".join(out)


def forwarding_prefix(client_ip: str, proto: bytes) -> bytes:
    """The proxy's first lines for every request of one client connection (computed once per connection)."""
    return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (client_ip.encode(), proto)


_FAST_LINES = b"X-Forwarded-Host: %s\r\nX-Request-ID: %s\r\nVia: " + VIA + b"\r\n"
FAST_SUFFIX = _FAST_LINES + b"\r\n"
FAST_SUFFIX_TRACE = _FAST_LINES + b"traceparent: %s\r\n\r\n"
# The whole head of a plain request with a new sampled trace, in one formatting: the received head
# (without its blank line), the connection's forwarding prefix, X-Forwarded-Host, the request id
# (process prefix and counter) and "trace-id-span-id" (see new_trace_ids).
FAST_HEAD_NEW_TRACE = (
    b"%s%sX-Forwarded-Host: %s\r\nX-Request-ID: %s-%x\r\nVia: " + VIA + b"\r\ntraceparent: 00-%s-01\r\n\r\n"
)
# What ``fast.trace_head`` writes between the request id and the new trace's ids (its ``via`` argument):
# FAST_HEAD_NEW_TRACE is ``...%x`` + this + ``%s-01\r\n\r\n``.
FAST_TRACE_VIA = b"\r\nVia: " + VIA + b"\r\ntraceparent: 00-"


# Response field lines removed on the fast path (one regex substitution over the raw block).
_RESPONSE_HOP = re.compile(
    rb"^(?:connection|keep-alive|te|trailer|transfer-encoding|upgrade|proxy-[!#$%&'*+.^_`|~0-9a-z-]*)"
    rb"[ \t]*:[^\r\n]*\r\n",
    re.IGNORECASE | re.MULTILINE,
)
_PLAIN_TOKENS = frozenset({b"keep-alive", b"close"})
_VIA_LINE = b"Via: " + VIA + b"\r\n"


def client_response_head(resp: ResponseHead, client_minor: int, keep_alive: bool, rechunk: bool, tunnel: bool) -> bytes:
    """The head sent to the client (the general path).

    ``rechunk``: the body is re-framed as chunked (HTTP/1.1 client, chunked backend body); otherwise a
    chunked backend body is sent decoded and the connection closed (HTTP/1.0 client). A Via line
    is added (several Via lines are one list, RFC 9110 §5.3). Content-Length goes on as one line with
    one value (RFC 9110 §8.6: a repeated value is sent once), never on a 1xx or 204 response.
    """
    out = [b"HTTP/1.%d %d %s\r\n" % (1 if client_minor else 0, resp.status, resp.reason)]
    if not tunnel and resp.plain_length and resp.connection_tokens <= _PLAIN_TOKENS:
        # Content-Length (kept as is) and every end-to-end field pass through untouched.
        out.append(_RESPONSE_HOP.sub(b"", resp.raw_fields))
    else:
        drop = resp.connection_tokens
        upgrade_value: bytes | None = None
        for name, value in resp.headers:
            n = name.lower()
            if n == b"content-length":
                continue  # re-emitted below from the parsed length: no Connection token drops framing
            elif n in _HOP_BY_HOP or n in drop or n.startswith(b"proxy-"):
                if n == b"upgrade":
                    upgrade_value = value
            else:
                out.append(b"%s: %s\r\n" % (name, value))
        if tunnel:
            out.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % (upgrade_value or b""))
        elif resp.length_field is not None and not resp.chunked:
            out.append(b"Content-Length: %s\r\n" % resp.length_field)
    out.append(_VIA_LINE)
    if not tunnel:
        if rechunk:
            out.append(b"Transfer-Encoding: chunked\r\n")
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        elif client_minor == 0:
            out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)
