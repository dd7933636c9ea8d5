"""The HTTP probe's protocol logic, with no I/O: the request bytes and an incremental response judge.

:class:`ResponseCheck` is fed the bytes a backend sends and answers a :class:`Verdict` as soon as
one is possible: right after the response head when no body is expected (the rest is never read),
or once the expected substring shows up in the first ``max_body`` bytes of the body. Parsing
(chunked bodies included) is done by httptools (llhttp), the parser uvicorn and the proxy use.
"""

from __future__ import annotations

import httptools

from services.health.state import Verdict

MAX_HEAD_BYTES = 16 * 1024  # a health endpoint with a larger response head is answered "fail"
MAX_BODY_BYTES = 64 * 1024  # at most this much body is searched for ``expect_body``

USER_AGENT = "gobalancer-health/1"


def build_request(method: str, path: str, host: str) -> bytes:
    """One HTTP/1.1 request; ``Connection: close`` so the backend may free the connection at once."""
    return (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("latin-1")


def status_matches(status: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= status <= hi for lo, hi in ranges)


class ResponseCheck:
    """Judge one response incrementally: :meth:`feed` bytes, :meth:`eof` when the backend closes."""

    def __init__(
        self,
        ranges: tuple[tuple[int, int], ...],
        expect_body: bytes = b"",
        *,
        head: bool = False,
        max_head: int = MAX_HEAD_BYTES,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self._ranges = ranges
        # A HEAD response has no body to search (and llhttp would wait for the Content-Length bytes
        # it never sends): judge it on its head alone.
        self._expect = b"" if head else expect_body
        self._max_head = max_head
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._received = 0
        self._status = 0
        self._head_done = False
        self._complete = False
        self._body = bytearray()
        self.verdict: Verdict | None = None

    # httptools callbacks ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        room = self._max_body - len(self._body)
        if room > 0:
            self._body += body[:room]

    def on_message_complete(self) -> None:
        if self._head_done and 100 <= self._status < 200 and self._status != 101:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            self._head_done = False
            self._status = 0
            return
        self._complete = True

    # -----------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> Verdict | None:
        """Account for ``data``; return the verdict once it is known (and on every later call)."""
        if self.verdict is not None:
            return self.verdict
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # 101 Switching Protocols: the head is complete, judge the status
        except httptools.HttpParserError as exc:
            return self._decide(False, f"invalid HTTP response: {exc}")
        if not self._head_done:
            if self._received - len(self._body) > self._max_head:
                return self._decide(False, f"response head larger than {self._max_head} bytes")
            return None
        if not status_matches(self._status, self._ranges):
            return self._decide(False, f"HTTP {self._status}")
        if not self._expect:
            return self._decide(True, f"HTTP {self._status}")
        if self._expect in self._body:
            return self._decide(True, f"HTTP {self._status}, body matched")
        if self._complete or len(self._body) >= self._max_body:
            return self._body_mismatch()
        return None

    def eof(self) -> Verdict:
        """The backend closed the connection: judge what arrived."""
        if self.verdict is not None:
            return self.verdict
        if not self._head_done:
            what = "an incomplete response head" if self._received else "no response"
            return self._decide(False, f"connection closed after {what}")
        if not status_matches(self._status, self._ranges):
            return self._decide(False, f"HTTP {self._status}")
        if not self._expect or self._expect in self._body:
            return self._decide(True, f"HTTP {self._status}")
        return self._body_mismatch()

    def _body_mismatch(self) -> Verdict:
        shown = self._expect[:40].decode("utf-8", "replace")
        return self._decide(False, f"HTTP {self._status}, body lacks {shown!r}")

    def _decide(self, ok: bool, reason: str) -> Verdict:
        self.verdict = Verdict(ok, reason)
        return self.verdict
