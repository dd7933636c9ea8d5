"""msgspec's messages taken apart once, for the config loader and the admin API's bodies."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shared.config import BackendConfig, Config, Seconds
from shared.config.durations import dec_hook
from shared.config.errors import describe, join, named_field, soften, split_msgspec, type_at


def error(data: Any, tp: Any = Config) -> msgspec.ValidationError:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(data, tp, strict=True, dec_hook=dec_hook)
    return info.value


def test_split_gives_problem_and_path() -> None:
    assert split_msgspec(error({"backends": [{"address": "a:1", "weight": "x"}]})) == (
        "Expected `int`, got `str`",
        "backends[0].weight",
    )
    assert split_msgspec(error([])) == ("Expected `object`, got `array`", "")


def test_named_field_takes_a_path_under_the_field() -> None:
    assert named_field("weight: must be > 0") == ("weight", "", "must be > 0")
    assert named_field("routes[2].pool: unknown pool 'x'") == ("routes", "[2].pool", "unknown pool 'x'")
    assert named_field("pools.web.algorithm: bad") == ("pools", ".web.algorithm", "bad")
    assert named_field("Expected `int`") is None


def test_soften_and_join() -> None:
    assert soften("Expected `int`, got `str`") == "expected `int`, got `str`"
    assert soften("Invalid enum value 'x'") == "invalid value 'x'"
    assert join("", "a") == "a" and join("a", "b") == "a.b" and join("a", "[0]") == "a[0]" and join("a", "") == "a"


def test_type_at_follows_fields_and_items() -> None:
    assert type_at(Config, "backends[0]") is BackendConfig
    assert type_at(Config, "health_check.interval_sec") is Seconds
    assert type_at(Config, "health_check.nope") is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"health_check": {"intervall_sec": 1}}, ("health_check.intervall_sec", "unknown field (allowed: type,")),
        ({"mode": "udp"}, ("mode", "invalid value 'udp' (expected one of: http, tcp)")),
        ({"timeout": {"connect_timeout": 0}}, ("timeout.connect_timeout", "must be > 0")),
        ({"discovery": {"docker": {"resync_sec": 0}}}, ("discovery.docker.resync_sec", "must be > 0")),
        ({"backends": [{"address": "a:1"}, {"address": "a:1"}]}, ("backends[1]", "duplicate address a:1")),
    ],
)
def test_describe(data: Any, expected: tuple[str, str]) -> None:
    path, problem = describe(error(data), Config)
    assert path == expected[0] and problem.startswith(expected[1])
