"""The short responses the proxy produces itself; every one carries the request id."""

from __future__ import annotations

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def error_response(status: int, request_id: bytes, *, close: bool, minor: int = 1, why: str = "") -> bytes:
    """``why``: a reason code for the client (``X-GoBalancer-Reason``, e.g. ``pool-saturated``), if any."""
    reason = REASONS.get(status, b"Error")
    body = b"%d %s\nrequest id: %s\n" % (status, reason, request_id)
    if why:
        body += b"reason: %s\n" % why.encode("ascii")
    connection = b"close" if close else (b"keep-alive" if minor == 0 else b"")
    return b"".join(
        [
            b"HTTP/1.%d %d %s\r\n" % (1 if minor else 0, status, reason),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"X-Request-ID: %s\r\n" % request_id,
            b"X-GoBalancer-Reason: %s\r\n" % why.encode("ascii") if why else b"",
            b"Connection: %s\r\n" % connection if connection else b"",
            b"\r\n",
            body,
        ]
    )
