"""The fast path: plain requests and responses recognised, validated and rewritten in one step.

Most requests and responses are plain: canonical field lines ("Name: value" with one space), no
framing but a Content-Length, nothing the proxy rewrites. Each is recognised, validated and split in
one pass, and forwarded by splicing the received bytes with the proxy's own lines: no head object,
no per-header Python loop. Anything else is not refused here: it takes the general path
(``parser.parse_request_head`` / ``parse_response_head``), which has the last word on validity.

Two implementations with one contract:

- ``_fast.c``, compiled by ``make install`` (``scripts/build-ext``): one C scan per head, bounds-checked,
  linear, no backtracking. The default.
- the regular expressions below with ``request_py`` / ``response_py``: the reference, and the
  fallback when the extension is not built (or ``GOBALANCER_PURE_PYTHON=1``). C code too (``re``),
  linear by construction (possessive quantifiers only), but with a match object and a substitution
  per head: about 1.3 µs more per request.

tests/unit/proxy/test_fast_path.py proves, on generated heads, that both implementations give the
same answer and that whatever they accept the general path accepts with the same bytes and decisions.
"""

from __future__ import annotations

import os
import random
import re
from binascii import hexlify
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from services.proxy.http.parser import _HOST, _TOKEN, _VCHAR

# -- requests --------------------------------------------------------------------------------------

# Names the fast path leaves to the general one: framing and hop-by-hop fields, the fields the proxy
# sets itself, and names with an underscore (dropped by default: see parse_request_head).
_REQUEST_SPECIAL = (
    rb"(?i:host|content-length|transfer-encoding|connection|keep-alive|upgrade|te|trailer|expect|proxy-[^:]*"
    rb"|x-forwarded-[^:]*|forwarded|via|x-request-id|traceparent|tracestate):"
)
_CANONICAL_VALUE = _VCHAR + rb"++(?:[ \t]++" + _VCHAR + rb"++)*+"  # no leading or trailing whitespace
_FAST_NAME = rb"[!#$%&'*+\-.^`|~0-9A-Za-z]++"  # a token without "_"
_FAST_REQUEST_LINE = rb"(?!" + _REQUEST_SPECIAL + rb")" + _FAST_NAME + rb": " + _CANONICAL_VALUE + rb"\r\n"


@lru_cache(maxsize=8)
def fast_request_matcher(max_target: int) -> Callable[[bytes], re.Match[bytes] | None]:
    """The ``fullmatch`` of a read that is exactly one plain HTTP/1.1 request head: not HEAD,
    origin-form target of at most ``max_target`` bytes, exactly one valid Host, no body framing, no
    Connection, nothing the proxy rewrites. Groups: the head without its blank line, the Host value."""
    return re.compile(
        rb"((?!HEAD |CONNECT )"
        + _TOKEN
        + rb" /[!-\x22$-~]{0,%d}+ HTTP/1\.1\r\n" % (max_target - 1)
        + rb"(?:"
        + _FAST_REQUEST_LINE
        + rb")*+"
        rb"(?i:host): (" + _HOST + rb")\r\n"
        rb"(?:" + _FAST_REQUEST_LINE + rb")*+)\r\n"
    ).fullmatch


def request_py(data: bytes, max_target: int, max_head: int) -> tuple[bytes, bytes] | None:
    """``data`` is exactly one plain request head of at most ``max_head`` bytes: (the head without
    its blank line, the Host value); else None."""
    m = fast_request_matcher(max_target)(data)
    if m is None or len(data) > max_head:
        return None
    head, host = m.groups()
    return head, host


Routed = tuple[bytes, bytes, bytes, bytes, bytes, bytes]


def host_name(host: bytes) -> bytes:
    """A Host value's name, lowercased, without its port (``[::1]:80`` -> ``[::1]``): what routes match."""
    name = host[: host.rindex(b"]") + 1] if host.startswith(b"[") and b"]" in host else host.partition(b":")[0]
    return name.lower()


def request_routed_py(data: bytes, max_target: int, max_head: int) -> Routed | None:
    """``request_py`` and what routing needs: (head, host, the host's name lowercased without its port,
    the target up to its query, the method, the path's first segment: up to its second ``/``)."""
    plain = request_py(data, max_target, max_head)
    if plain is None:
        return None
    head, host = plain
    sp = head.index(b" ")
    target = head[sp + 1 : head.index(b" HTTP/1.1\r\n")]
    path = target.partition(b"?")[0]
    second = path.find(b"/", 1)
    return head, host, host_name(host), path, head[:sp], path[:second] if second > 0 else path


def request_route_py(hosts: Any, data: bytes, max_target: int, max_head: int) -> tuple[Any, ...] | None:
    """``request_routed_py`` with the route table's fast lookup: (head, host, host name, path, method,
    ``hosts[host name][segment]``) (``hosts``: ``RouteTable.hosts``)."""
    routed = request_routed_py(data, max_target, max_head)
    if routed is None:
        return None
    head, host, name, path, method, segment = routed
    return head, host, name, path, method, hosts[name][segment]


# -- responses -------------------------------------------------------------------------------------

# The general path relays a plain response's field lines as received (whitespace and all), so the
# fast path needs no canonical form, only valid lines. Lines whose name cannot start a special one
# (first character not c, t, k, u or p) skip the lookahead: most lines, most of the cost.
_RESPONSE_SPECIAL = rb"(?i:c(?:ontent-length|onnection)|t(?:ransfer-encoding|e|railer)|keep-alive|upgrade|proxy-[^:]*):"
_RAW_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*+"
_PLAIN_NAME = rb"[!#$%&'*+\-.^_`|~0-9ABD-JLMNOQ-SV-Zabd-jlmnoq-sv-z][!#$%&'*+\-.^_`|~0-9A-Za-z]*+"
# Lines are matched with the CRLF *before* them, so the head's group ends without its last CRLF.
_FAST_RESPONSE_LINE = (
    rb"\r\n(?:"
    + _PLAIN_NAME
    + rb":"
    + _RAW_VALUE
    + rb"|(?!"
    + _RESPONSE_SPECIAL
    + rb")"
    + _TOKEN
    + rb":"
    + _RAW_VALUE
    + rb"|(?i:connection):[ \t]*+(?i:keep-alive)[ \t]*+)"
)
FAST_RESPONSE = re.compile(
    rb"(HTTP/1\.1 (?!204 |304 )([2-5][0-9][0-9]) [^\x00-\x08\x0a-\x1f\x7f]*+"
    rb"(?:" + _FAST_RESPONSE_LINE + rb")*+"
    rb"\r\n(?i:content-length):[ \t]*+([0-9]{1,18})[ \t]*+"
    rb"(?:" + _FAST_RESPONSE_LINE + rb")*+)\r\n\r\n(.*)",
    re.DOTALL,
).match
"""A plain HTTP/1.1 response head (status 2xx-5xx but 204/304) framed by one Content-Length, with at
most ``Connection: keep-alive`` as a hop-by-hop field. Groups: the head up to its last line's end
(no CRLF), the status, the length, and what follows the head (``.*`` with DOTALL jumps to the end:
it costs nothing whatever the size)."""
_KEEP_ALIVE_LINE = re.compile(rb"\r\n(?i:connection):[ \t]*+(?i:keep-alive)[ \t]*+(?=\r|\Z)")
"""The ``Connection: keep-alive`` lines of a fast-path response head (group 1), removed."""
MAX_STRIPPED = 8  # keep-alive lines a fast response may carry (the C scan keeps their places)


def response_py(data: bytes, via_end: bytes) -> tuple[int, bytes, int, int] | None:
    """``data`` starts with a plain response head framed by Content-Length: (status, out, missing,
    body_at). ``out`` is the head without its ``Connection: keep-alive`` lines, then ``via_end``, then
    the body bytes of this read up to the length; ``missing`` is the length minus the body bytes
    present (0: complete; < 0: bytes beyond the response). When ``missing`` > 0, ``out`` is the head
    alone and the body starts at ``body_at`` in ``data`` (else ``body_at`` is 0)."""
    m = FAST_RESPONSE(data)
    if m is None:
        return None
    head, status, length_digits, body = m.groups()
    stripped, count = _KEEP_ALIVE_LINE.subn(b"", head)
    if count > MAX_STRIPPED:
        return None
    length = int(length_digits)
    missing = length - len(body)
    if missing > 0:
        return int(status), stripped + via_end, missing, len(data) - len(body)
    return int(status), stripped + via_end + body[:length], missing, 0


# -- a new trace per request ---------------------------------------------------------------------------

_bits = random.Random().getrandbits


def trace_head_py(head: bytes, prefix: bytes, host: bytes, id_prefix: bytes, n: int, via: bytes) -> bytes:
    """The fast path's head with a new sampled trace (``headers.FAST_HEAD_NEW_TRACE``; ``via`` is
    ``headers.FAST_TRACE_VIA``): new trace and span ids, 24 random bytes in hex with a dash after the first
    16. An all-zero id (forbidden by W3C Trace Context) has a chance of 2**-64 per request: left to chance
    here; the C twin avoids it."""
    ids = hexlify(_bits(192).to_bytes(24, "little"), b"-", -16)
    return b"%s%sX-Forwarded-Host: %s\r\nX-Request-ID: %s-%x%s%s-01\r\n\r\n" % (
        head,
        prefix,
        host,
        id_prefix,
        n,
        via,
        ids,
    )


# -- the implementation in use ---------------------------------------------------------------------

request: Callable[[bytes, int, int], tuple[bytes, bytes] | None] = request_py
request_route: Callable[[Any, bytes, int, int], tuple[Any, ...] | None] = request_route_py
response: Callable[[bytes, bytes], tuple[int, bytes, int, int] | None] = response_py
trace_head: Callable[[bytes, bytes, bytes, bytes, int, bytes], bytes] = trace_head_py
COMPILED = False
EXTENSION: Any = None  # the C module when in use (services.proxy.stats takes its Tally from it)
if os.environ.get("GOBALANCER_PURE_PYTHON", "") not in ("1", "true", "yes"):
    try:
        from services.proxy.http import _fast  # type: ignore[attr-defined]
    except ImportError:  # not built (no C compiler at install): the Python twin
        pass
    else:
        request, request_route = _fast.request, _fast.request_route
        response, trace_head = _fast.response, _fast.trace_head
        EXTENSION = _fast
        COMPILED = True
