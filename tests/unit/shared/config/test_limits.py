"""Rate-limit rules: strict parsing, errors that name their field."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shared.config.limits import RateLimitRule, RateLimitsConfig, parse_rate


def rule(**fields: Any) -> RateLimitRule:
    return msgspec.convert({"name": "r", "rate": "100/s", **fields}, RateLimitRule)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100/s", (100, 1)), ("6000/min", (6000, 60)), ("10/h", (10, 3600)), ("1/second", (1, 1)), ("5/hour", (5, 3600))],
)
def test_rates(text: str, expected: tuple[int, int]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["100", "100/d", "1.5/s", "0/s", " 100/s", "100 / s", "-1/s", "100/S", "/s", "10/ms"])
def test_bad_rates_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"^rate: .*"):
        rule(rate=text)


def test_a_rule_with_defaults() -> None:
    r = rule()
    assert (r.limit, r.window, r.quota, r.applies_to, r.key, r.fail_closed) == (100, 1, 100, "all", "client_ip", False)
    assert rule(rate="6000/min", burst=50).quota == 6050


def test_keys() -> None:
    assert rule(key="header:X-Api-Key").header == b"x-api-key"
    assert rule(key="cookie:session").cookie == b"session"
    assert rule(key="rule").header is None
    for bad in ["ip", "header:", "header:a b", "cookie:", "cookie:a;b", "client_ip "]:
        with pytest.raises(msgspec.ValidationError, match=r"^key: "):
            rule(key=bad)


def test_applies_to() -> None:
    assert rule(applies_to="pool: api").applies_to == "pool:api"
    assert rule(applies_to="route:login").applies_to == "route:login"
    for bad in ["pools:api", "pool:", "everything", ""]:
        with pytest.raises(msgspec.ValidationError, match=r"^applies_to: "):
            rule(applies_to=bad)


def test_names_and_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"^name: "):
        rule(name="a b")
    with pytest.raises(msgspec.ValidationError, match="unknown field `limit`"):
        rule(limit=3)
    with pytest.raises(msgspec.ValidationError, match=r"burst"):
        rule(burst=-1)


def test_settings() -> None:
    config = msgspec.convert(
        {"rules": [{"name": "a", "rate": "10/s"}, {"name": "b", "rate": "1/h"}], "max_keys": 5000, "sync_sec": 0.25},
        RateLimitsConfig,
    )
    assert [r.name for r in config.rules] == ["a", "b"] and config.max_keys == 5000
    assert RateLimitsConfig().max_keys == 100_000 and RateLimitsConfig().sync_sec == 0.1
    with pytest.raises(msgspec.ValidationError, match="duplicate name 'a'"):
        msgspec.convert({"rules": [{"name": "a", "rate": "1/s"}, {"name": "a", "rate": "2/s"}]}, RateLimitsConfig)
    with pytest.raises(msgspec.ValidationError, match="max_keys"):
        msgspec.convert({"max_keys": 10}, RateLimitsConfig)
    with pytest.raises(msgspec.ValidationError, match="sync_sec"):
        msgspec.convert({"sync_sec": 0}, RateLimitsConfig)
