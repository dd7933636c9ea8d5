"""HTTP/1.x message heads and body framing: pure functions over bytes, no I/O.

The proxy parses request heads itself (rather than trusting a tolerant parser) because the
request-smuggling defences of RFC 9112 §6.3 and §11.2 must hold whatever a library accepts:
a request is only forwarded once its complete head has been validated here, and every
ambiguity about where its body ends is rejected with 400 (and the connection closed).

Header lines are matched with one strict regular expression, which rejects in a single step:
whitespace before the colon, obs-fold (a line starting with SP/HTAB), NUL, bare CR or LF and
other control characters in a value.

Every expression here runs in time linear in its input. A field value is matched as runs of
visible characters, or of whitespace *followed by* a visible character, all with possessive
quantifiers: no position is ever tried twice, so a value of 64 KB of spaces ending in a control
byte is refused in one pass. (The former ``[ \t]*(VALUE)?[ \t]*`` with a greedy value could split a
run of spaces between three quantifiers in O(n²) ways: 11 s for one 32 KB header line.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VCHAR = rb"[^\x00-\x20\x7f]"  # visible characters and obs-text
# A value without its surrounding OWS: no CTL but HTAB. Linear (see above): possessive runs, and
# whitespace only where a visible character follows it.
_VALUE = rb"(?:" + _VCHAR + rb"++|[ \t]++(?=" + _VCHAR + rb"))*+"
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*+(" + _VALUE + rb")[ \t]*+")
# A whole field section ("name: value\r\n"*) is split by one findall. A match starts at a line start
# and ends at the first CRLF (values cannot hold CR or LF), so the section is valid exactly when
# every line matched: as many matches as LFs. A bad line (obs-fold, space before the colon, bare CR
# or LF, NUL...) yields no match and makes the counts differ.
_FIELDS = re.compile(rb"^(" + _TOKEN + rb"):[ \t]*+(" + _VALUE + rb")[ \t]*+\r\n", re.MULTILINE)
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/1\.([01])")
# What a reverse proxy forwards as a target: visible ASCII, no fragment (RFC 9112 §3.2: "#" never
# appears in a request target; non-ASCII bytes must be percent-encoded).
_TARGET = re.compile(rb"[!-\x22$-~]+")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# Host (RFC 9112 §3.2, RFC 3986 §3.2.2): an IP literal or a reg-name, and an optional port. No
# spaces, "/", "@", "\\" or commas (a list is two hosts): 400, as HAProxy answers. Empty is allowed
# (a target without an authority).
_HOST = rb"(?:\[[0-9A-Za-z:.%\-_~]++\]|[A-Za-z0-9\-._~%!$&'()*+;=]++)(?::[0-9]{1,5})?"
_HOST_VALUE = re.compile(rb"(?:" + _HOST + rb")?")
# absolute-form (RFC 9112 §3.2.2): scheme "://" authority (no userinfo), then the path and query.
_ABSOLUTE_FORM = re.compile(rb"(?i:https?)://(" + _HOST + rb")([/?][!-\x22$-~]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
MAX_CHUNK_LINE = 4096
MAX_INTERIM = 8  # 1xx responses relayed before the final one; a backend sending more gets a 502


class HttpError(Exception):
    """A message the proxy refuses; ``status`` is what the client is answered (400, 414, 431 ...)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


Headers = list[tuple[bytes, bytes]]  # (name as received, value without surrounding OWS)


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    minor: int  # HTTP/1.<minor>
    headers: Headers
    content_length: int | None  # None: no Content-Length (chunked or no body)
    chunked: bool
    te_codings: bytes  # the Transfer-Encoding value when chunked (other codings pass through)
    keep_alive: bool
    upgrade: bool  # Connection: upgrade with an Upgrade header: becomes a tunnel on 101
    connection_tokens: frozenset[bytes] = field(default_factory=frozenset)
    host: bytes | None = None
    request_id: bytes | None = None  # X-Request-ID as received (kept when present)
    traceparent: bytes | None = None  # as received; b"" when there were several (invalid)
    host_rewritten: bool = False  # absolute-form: Host comes from the target (sent after the fields)

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(slots=True)
class ResponseHead:
    minor: int
    status: int
    reason: bytes
    content_length: int | None  # the body's length by the framing rules (0 for HEAD, 1xx, 204, 304)
    chunked: bool
    keep_alive: bool
    connection_tokens: frozenset[bytes] = field(default_factory=frozenset)
    raw_fields: bytes = b""  # the field lines as received, each ending with CRLF
    headers: Headers = field(default_factory=list)
    length_field: bytes | None = None  # the one Content-Length value received (re-sent as is: HEAD, 304)
    plain_length: bool = True  # Content-Length, if any, came as one line with one plain value


def check_incomplete_head(buf: bytes | bytearray, max_head: int, max_target: int) -> None:
    """Called while a request head has no end yet: refuse it early if it is already too long."""
    if len(buf) > max_target + 32 and buf.find(b"\r\n", 0, max_target + 34) < 0:
        raise HttpError(414, "request target too long")  # (a bounded search: linear however it arrives)
    if len(buf) > max_head:
        raise HttpError(431, "request header section too large")


def _parse_headers(head: bytes, start: int, status: int) -> tuple[Headers, bytes]:
    """The fields of ``head`` (which ends without the blank line) from offset ``start``, and their
    raw block (each line ending with CRLF)."""
    if start >= len(head):
        return [], b""
    block = head[start:] + b"\r\n"
    headers: Headers = _FIELDS.findall(block)
    if len(headers) != block.count(b"\n"):
        for line in block.split(b"\r\n"):
            if line[:1] in (b" ", b"\t"):
                raise HttpError(status, "obsolete line folding")
        raise HttpError(status, "malformed header line")
    return headers, block


_NO_TOKENS: frozenset[bytes] = frozenset()
_COMMON_TOKENS = {b"keep-alive": frozenset({b"keep-alive"}), b"close": frozenset({b"close"})}


def _connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    if not values:
        return _NO_TOKENS
    if len(values) == 1 and (common := _COMMON_TOKENS.get(values[0].lower())) is not None:
        return common
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


def _content_length(values: list[bytes], status: int) -> int:
    if len(values) != 1:
        raise HttpError(status, "more than one Content-Length")
    if not _DIGITS.fullmatch(values[0]):
        raise HttpError(status, "invalid Content-Length")
    return int(values[0])


def _te_chunked(values: list[bytes], status: int) -> tuple[bool, bytes]:
    codings = [c.strip().lower() for v in values for c in v.split(b",")]
    if any(not c for c in codings):
        raise HttpError(status, "invalid Transfer-Encoding")
    if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
        raise HttpError(status, "Transfer-Encoding must end with chunked")
    return True, b", ".join(codings)


def parse_request_head(head: bytes, max_target: int) -> RequestHead:
    """Parse a complete request head (``head`` ends just before the blank line)."""
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line_end = len(head)
    request_line = head[:line_end]
    sp = request_line.find(b" ")
    sp2 = request_line.find(b" ", sp + 1)
    if sp > 0 and sp2 > 0 and sp2 - sp - 1 > max_target:
        raise HttpError(414, "request target too long")
    m = _REQUEST_LINE.fullmatch(request_line)
    if m is None:
        raise HttpError(400, "malformed request line")
    method, target, minor = m.group(1), m.group(2), int(m.group(3))
    if _TARGET.fullmatch(target) is None:
        raise HttpError(400, "fragment in request target" if b"#" in target else "invalid request target")
    headers, _ = _parse_headers(head, line_end + 2, 400)

    cl_values: list[bytes] = []
    te_values: list[bytes] = []
    conn_values: list[bytes] = []
    host_values: list[bytes] = []
    upgrade_values: list[bytes] = []
    rid_values: list[bytes] = []
    trace_values: list[bytes] = []
    found = {
        b"content-length": cl_values,
        b"transfer-encoding": te_values,
        b"connection": conn_values,
        b"host": host_values,
        b"upgrade": upgrade_values,
        b"x-request-id": rid_values,
        b"traceparent": trace_values,
    }.get
    for name, value in headers:
        values = found(name.lower())
        if values is not None:
            values.append(value)

    if len(host_values) > 1:
        raise HttpError(400, "more than one Host")
    if minor == 1 and not host_values:
        raise HttpError(400, "missing Host")
    if host_values and _HOST_VALUE.fullmatch(host_values[0]) is None:
        raise HttpError(400, "invalid Host")
    # The request target (RFC 9112 §3.2): a reverse proxy takes origin-form ("/path?q"), "*" for
    # OPTIONS, and absolute-form, which it turns into origin-form with the target's authority as
    # Host (the authority wins over a Host header that says otherwise: the backend must never see
    # two different hosts for one request). Anything else is refused before it can reach a backend.
    host_rewritten = False
    if method == b"CONNECT":
        raise HttpError(501, "CONNECT is not supported by a reverse proxy")
    if not target.startswith(b"/"):
        if target == b"*":
            if method != b"OPTIONS":
                raise HttpError(400, "asterisk-form is only for OPTIONS")
        else:
            absolute = _ABSOLUTE_FORM.fullmatch(target)
            if absolute is None:
                raise HttpError(400, "invalid request target")
            authority = absolute.group(1)
            path = absolute.group(2) or b"/"
            target = path if path.startswith(b"/") else b"/" + path
            headers = [(n, v) for n, v in headers if n.lower() != b"host"]
            host_values = [authority]
            host_rewritten = True
    content_length: int | None = None
    chunked = False
    te_codings = b""
    if te_values:
        if cl_values:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if minor == 0:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        chunked, te_codings = _te_chunked(te_values, 400)
    elif cl_values:
        content_length = _content_length(cl_values, 400)
    tokens = _connection_tokens(conn_values)
    keep_alive = (b"close" not in tokens) if minor == 1 else (b"keep-alive" in tokens)
    return RequestHead(
        method=method,
        target=target,
        minor=minor,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        te_codings=te_codings,
        keep_alive=keep_alive,
        upgrade=bool(upgrade_values) and b"upgrade" in tokens,
        connection_tokens=tokens,
        host=host_values[0] if host_values else None,
        request_id=rid_values[0] if rid_values and rid_values[0] else None,
        traceparent=(trace_values[0] if len(trace_values) == 1 else b"") if trace_values else None,
        host_rewritten=host_rewritten,
    )


def parse_response_head(head: bytes, request_method: bytes) -> ResponseHead:
    """Parse a complete response head; any problem is a 502 (bad gateway) for the client."""
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line_end = len(head)
    m = _STATUS_LINE.fullmatch(head[:line_end])
    if m is None:
        raise HttpError(502, "malformed status line from backend")
    minor, status, reason = int(m.group(1)), int(m.group(2)), m.group(3) or b""
    headers, raw_fields = _parse_headers(head, line_end + 2, 502)
    cl_values: list[bytes] = []
    te_values: list[bytes] = []
    conn_values: list[bytes] = []
    found = {b"content-length": cl_values, b"transfer-encoding": te_values, b"connection": conn_values}.get
    for name, value in headers:
        values = found(name.lower())
        if values is not None:
            values.append(value)
    tokens = _connection_tokens(conn_values)
    keep_alive = (b"close" not in tokens) if minor == 1 else (b"keep-alive" in tokens)
    # Content-Length (RFC 9110 §8.6): one value, or a list of one repeated value (sent on as one
    # line); values that differ are a 502. Never sent on 1xx and 204 responses.
    length_field: bytes | None = None
    plain_length = len(cl_values) <= 1
    if cl_values:
        distinct = {v.strip() for cv in cl_values for v in cv.split(b",")}
        if len(distinct) != 1:
            raise HttpError(502, "backend sent conflicting Content-Length")
        length_field = distinct.pop()
        if not _DIGITS.fullmatch(length_field):
            raise HttpError(502, "backend sent an invalid Content-Length")
        plain_length = plain_length and cl_values[0] == length_field
    content_length: int | None = None
    chunked = False
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        content_length = 0
        if status < 200 or status == 204:
            length_field = None
    elif te_values:
        if cl_values:
            raise HttpError(502, "backend sent both Content-Length and Transfer-Encoding")
        codings = [c.strip().lower() for v in te_values for c in v.split(b",")]
        if codings[-1] == b"chunked":
            chunked = True
        else:  # body ends when the backend closes: the connection cannot be reused
            keep_alive = False
    elif length_field is not None:
        content_length = int(length_field)
    else:
        keep_alive = False  # read until close
    return ResponseHead(
        minor,
        status,
        reason,
        content_length,
        chunked,
        keep_alive,
        tokens,
        raw_fields,
        headers,
        length_field,
        plain_length and not (cl_values and length_field is None),
    )


class ChunkedDecoder:
    """Incremental decoder of the chunked transfer coding (RFC 9112 §7.1).

    ``feed`` returns the chunk data found in ``data`` and the number of bytes of ``data`` it
    consumed: bytes after the final CRLF belong to the next message (pipelining) and are left to the
    caller. Chunk sizes are strictly hexadecimal (no sign, no "0x", at most 15 digits), lines must
    end with CRLF, and trailer fields are validated and dropped.
    """

    __slots__ = ("_line", "_max_trailer", "_remaining", "_state", "_status", "_trailer", "done")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, status: int = 400, max_trailer: int = 32768) -> None:
        self._state = self._SIZE
        self._trailer = 0  # bytes of trailer section so far: bounded like a head
        self._max_trailer = max_trailer
        self._remaining = 0
        self._line = b""
        self._status = status  # the error status: 400 for requests, 502 for responses
        self.done = False

    def _read_line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        end = data.find(b"\n", pos)
        if end < 0:
            self._line += data[pos:]
            if len(self._line) > MAX_CHUNK_LINE:
                raise HttpError(self._status, "chunk line too long")
            return None, len(data)
        line = self._line + data[pos:end]
        self._line = b""
        if len(line) > MAX_CHUNK_LINE:
            raise HttpError(self._status, "chunk line too long")
        if not line.endswith(b"\r"):
            raise HttpError(self._status, "bare LF in chunked framing")
        return line[:-1], end + 1

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            state = self._state
            if state == self._DATA:
                take = min(self._remaining, n - pos)
                out.append(data[pos : pos + take] if (pos or take != n) else data)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_END
            elif state == self._DATA_END:
                # Exactly CRLF after the data (possibly split across reads).
                need = b"\r\n"[len(self._line) :]
                got = data[pos : pos + len(need)]
                if not need.startswith(got):
                    raise HttpError(self._status, "missing CRLF after chunk data")
                pos += len(got)
                if len(got) == len(need):
                    self._line = b""
                    self._state = self._SIZE
                else:
                    self._line += got
            elif state == self._SIZE:
                line, pos = self._read_line(data, pos)
                if line is None:
                    break
                m = _CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise HttpError(self._status, "invalid chunk size")
                size = int(m.group(1), 16)
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._remaining = size
                    self._state = self._DATA
            else:  # trailer section: field lines until an empty line
                line, pos = self._read_line(data, pos)
                if line is None:
                    break
                if line == b"":
                    self.done = True
                    continue
                self._trailer += len(line) + 2
                if self._trailer > self._max_trailer:
                    raise HttpError(self._status, "trailer section too large")
                if _HEADER_LINE.fullmatch(line) is None:
                    raise HttpError(self._status, "malformed trailer field")
        return out, pos


def frame_chunk(data: bytes) -> list[bytes]:
    """One chunk in the chunked coding (the proxy re-frames bodies rather than relaying raw framing)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def frame_chunks(pieces: list[bytes]) -> list[bytes]:
    """Each of ``pieces`` as one chunk, in a list of the parts to write."""
    out: list[bytes] = []
    for p in pieces:
        out += frame_chunk(p)
    return out


LAST_CHUNK = b"0\r\n\r\n"
