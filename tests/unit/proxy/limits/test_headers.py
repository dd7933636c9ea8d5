"""The 429 response against the syntax of draft-ietf-httpapi-ratelimit-headers-11 (sections 3, 4 and 6),
read with a small Structured Fields parser written from RFC 9651 section 4.2 (Lists, Items, Parameters)."""

from __future__ import annotations

import re

import pytest

from services.proxy.limits.headers import policy_item, sf_string, too_many_requests

BareItem = int | float | str | bytes | bool
Item = tuple[BareItem, dict[str, BareItem]]

_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")


class Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def fail(self, what: str) -> None:
        raise ValueError(f"{what} at {self.i} in {self.s!r}")

    def ows(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def list(self) -> list[Item]:  # RFC 9651 4.2.1 (the field value, leading/trailing SP removed)
        self.s = self.s.strip(" ")
        out: list[Item] = []
        while self.i < len(self.s):
            out.append(self.item())
            self.ows()
            if self.i >= len(self.s):
                return out
            if self.s[self.i] != ",":
                self.fail("expected ','")
            self.i += 1
            self.ows()
            if self.i >= len(self.s):
                self.fail("trailing comma")
        return out

    def item(self) -> Item:  # 4.2.3
        return self.bare(), self.params()

    def params(self) -> dict[str, BareItem]:  # 4.2.3.2
        out: dict[str, BareItem] = {}
        while self.i < len(self.s) and self.s[self.i] == ";":
            self.i += 1
            while self.i < len(self.s) and self.s[self.i] == " ":
                self.i += 1
            m = _KEY.match(self.s, self.i)
            if m is None:
                self.fail("expected a key")
                raise AssertionError
            self.i = m.end()
            value: BareItem = True
            if self.i < len(self.s) and self.s[self.i] == "=":
                self.i += 1
                value = self.bare()
            out[m.group()] = value
        return out

    def bare(self) -> BareItem:  # 4.2.3.1
        c = self.s[self.i : self.i + 1]
        if c == '"':
            return self.string()
        if c == ":":
            end = self.s.index(":", self.i + 1)
            raw, self.i = self.s[self.i + 1 : end], end + 1
            return raw.encode()
        if c == "?":
            value, self.i = self.s[self.i + 1 : self.i + 2] == "1", self.i + 2
            return value
        m = _NUMBER.match(self.s, self.i)
        if m is not None:
            self.i = m.end()
            return float(m.group()) if m.group(1) else int(m.group())
        m = _TOKEN.match(self.s, self.i)
        if m is None:
            self.fail("expected an item")
            raise AssertionError
        self.i = m.end()
        return m.group()

    def string(self) -> str:  # 4.2.5
        self.i += 1
        out = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == "\\":
                nxt = self.s[self.i : self.i + 1]
                if nxt not in ('"', "\\"):
                    self.fail("bad escape")
                out.append(nxt)
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not 0x20 <= ord(c) <= 0x7E:
                self.fail("not printable ASCII")
            else:
                out.append(c)
        self.fail("unterminated string")
        raise AssertionError


def parse_list(text: str) -> list[Item]:
    return Parser(text).list()


def test_the_parser_reads_the_drafts_examples() -> None:
    assert parse_list('"burst";q=100;w=60,"daily";q=1000;w=86400') == [
        ("burst", {"q": 100, "w": 60}),
        ("daily", {"q": 1000, "w": 86400}),
    ]
    assert parse_list('"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:')[0][1]["qu"] == "content-bytes"
    with pytest.raises(ValueError):
        parse_list('"a";q=1,')
    with pytest.raises(ValueError):
        parse_list('"a;q=1')


def response(**overrides: object) -> tuple[str, dict[str, str], bytes]:
    args: dict[str, object] = {"name": "api", "quota": 120, "window": 60, "retry_after": 7, "request_id": b"rid-1"}
    args.update(overrides)
    raw = too_many_requests(
        str(args["name"]), int(args["quota"]), int(args["window"]), int(args["retry_after"]),  # type: ignore[call-overload]
        args["request_id"], close=bool(args.get("close", False)),  # type: ignore[arg-type]
    )  # fmt: skip
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name), line
        assert name.lower() not in fields, f"{name} twice"
        fields[name.lower()] = value.strip(" ")
    assert int(fields["content-length"]) == len(body)
    return lines[0], fields, body


def test_the_429_response_follows_the_draft() -> None:
    status, fields, body = response()
    assert status == "HTTP/1.1 429 Too Many Requests"
    assert re.fullmatch(r"[0-9]+", fields["retry-after"])  # delay-seconds (RFC 9110 10.2.3)
    policy = parse_list(fields["ratelimit-policy"])
    assert len(policy) == 1
    name, params = policy[0]
    assert name == "api" and isinstance(name, str)  # section 3: the item is a String
    assert params == {"q": 120, "w": 60}
    limit = parse_list(fields["ratelimit"])
    assert len(limit) == 1 and limit[0][0] == "api"  # section 4.1: names the policy
    r, t = limit[0][1]["r"], limit[0][1]["t"]
    assert isinstance(r, int) and r == 0 and isinstance(t, int) and t >= 0
    assert int(fields["retry-after"]) >= t  # section 6: not earlier than the effective window's end
    assert fields["x-request-id"] == "rid-1"
    assert b"rate limit: api" in body


def test_retry_after_is_at_least_one_second_and_connection_close_is_said() -> None:
    _, fields, _ = response(retry_after=0, close=True)
    assert fields["retry-after"] == "1" and fields["connection"] == "close"
    assert parse_list(fields["ratelimit"])[0][1]["t"] == 1


def test_sf_strings_are_escaped_and_checked() -> None:
    assert parse_list(sf_string('a"b\\c').decode())[0][0] == 'a"b\\c'
    with pytest.raises(ValueError):
        sf_string("caf\u00e9")
    with pytest.raises(ValueError):
        policy_item("a", 1, 0)  # w must be > 0 (section 3.1.3)
