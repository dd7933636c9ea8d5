"""The 429 response of a refused request: ``Retry-After`` and the IETF RateLimit header fields.

Syntax from draft-ietf-httpapi-ratelimit-headers-11 (23 May 2026; -12 of 20 November 2026 is the latest
revision listed, with the same two fields): both are Structured Field Lists (RFC 9651, formerly 8941):

- ``RateLimit-Policy: "NAME";q=QUOTA;w=WINDOW`` (section 3): the item is a String naming the policy, ``q``
  the quota (non-negative Integer, in requests by default), ``w`` the window in seconds (Integer > 0).
- ``RateLimit: "NAME";r=REMAINING;t=SECONDS`` (section 4): ``r`` the quota available now, ``t`` the
  seconds within which the client can use no more than ``r``.
- Section 6: with both ``Retry-After`` and ``RateLimit`` the former should not point earlier than the end
  of the effective window, so ``t`` and ``Retry-After`` carry the same number of seconds here.

The quota is the rule's rate plus its burst (what the sliding window admits per window).
"""

from __future__ import annotations

import re

_SF_STRING_SAFE = re.compile(r"[\x20-\x7e]*")


def sf_string(value: str) -> bytes:
    """``value`` as a Structured Field String (RFC 9651 section 4.1.6): quoted, ``\\`` and ``"`` escaped."""
    if not _SF_STRING_SAFE.fullmatch(value):
        raise ValueError(f"not printable ASCII: {value!r}")
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def policy_item(name: str, quota: int, window: int) -> bytes:
    """One Quota Policy Item: ``"NAME";q=QUOTA;w=WINDOW``."""
    if quota < 0 or window < 1:
        raise ValueError("quota >= 0 and window >= 1 are required")
    return sf_string(name) + b";q=%d;w=%d" % (quota, window)


def service_limit_item(name: str, remaining: int, reset: int) -> bytes:
    """One Service Limit Item: ``"NAME";r=REMAINING;t=SECONDS``."""
    return sf_string(name) + b";r=%d;t=%d" % (max(0, remaining), max(0, reset))


def rate_limit_fields(name: str, quota: int, window: int, remaining: int, reset: int) -> bytes:
    """Both fields, each line ending in CRLF (for a response that is not a 429 too, if wanted)."""
    return (
        b"RateLimit-Policy: "
        + policy_item(name, quota, window)
        + b"\r\nRateLimit: "
        + service_limit_item(name, remaining, reset)
        + b"\r\n"
    )


def too_many_requests(
    name: str, quota: int, window: int, retry_after: int, request_id: bytes, *, close: bool, minor: int = 1
) -> bytes:
    """The whole 429 response to a request refused by rule ``name`` (``retry_after`` >= 1 seconds), in the
    shape of the proxy's other own responses (``services.proxy.http.errors.error_response``)."""
    retry_after = max(1, retry_after)
    body = b"429 Too Many Requests\nrate limit: %s\nretry after: %d s\nrequest id: %s\n" % (
        name.encode("ascii"),
        retry_after,
        request_id,
    )
    connection = b"close" if close else (b"keep-alive" if minor == 0 else b"")
    return b"".join(
        [
            b"HTTP/1.%d 429 Too Many Requests\r\n" % (1 if minor else 0),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Retry-After: %d\r\n" % retry_after,
            rate_limit_fields(name, quota, window, 0, retry_after),
            b"X-Request-ID: %s\r\n" % request_id,
            b"Connection: %s\r\n" % connection if connection else b"",
            b"\r\n",
            body,
        ]
    )
