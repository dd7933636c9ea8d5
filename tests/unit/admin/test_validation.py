"""Request Structs and the translation of msgspec errors into a field plus a readable problem."""

from __future__ import annotations

import msgspec
import pytest

from services.admin.problems import InvalidRequest, describe_validation
from services.admin.schemas import AlgorithmUpdate, BackendCreate, BackendPatch, BackendReplace


def problem(raw: bytes, tp: type[msgspec.Struct]) -> InvalidRequest:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)) as info:
        msgspec.json.decode(raw, type=tp, strict=True)
    assert isinstance(info.value, msgspec.ValidationError | msgspec.DecodeError)
    return describe_validation(info.value, tuple(tp.__struct_fields__))


@pytest.mark.parametrize(
    ("raw", "field", "detail"),
    [
        (b'{"address": "a:1", "x": 1}', "x", "unknown field (allowed: address, weight, state)"),
        (b'{"weight": 2}', "address", "required field is missing"),
        (b'{"address": "a:1", "weight": "2"}', "weight", "expected `int`, got `str`"),
        (b'{"address": "a:1", "weight": 0}', "weight", "expected `int` >= 1"),
        (b'{"address": "a:1", "weight": 10001}', "weight", "expected `int` <= 10000"),
        (b'{"address": "a:1", "state": "off"}', "state", "invalid value 'off'"),
        (b'{"address": "abc"}', "address", "address 'abc' must be host:port"),
        (b'{"address": "a"}', "address", "expected `str` of length >= 3"),
        (b'{"address": "[::1]:0"}', "address", "address '[::1]:0' has port 0 out of range 1-65535"),
        (b'{"address": "a:1"', "body", "invalid JSON: Input data was truncated"),
        (b"[]", "body", "expected `object`, got `array`"),
    ],
)
def test_backend_create_errors_name_their_field(raw: bytes, field: str, detail: str) -> None:
    err = problem(raw, BackendCreate)
    assert (err.field, err.detail) == (field, detail)


def test_backend_create_normalizes_the_address() -> None:
    assert msgspec.json.decode(b'{"address": "Host.Example:80"}', type=BackendCreate).address == "host.example:80"
    assert msgspec.json.decode(b'{"address": "[0:0::1]:80"}', type=BackendCreate).address == "[::1]:80"


def test_put_and_patch_bodies() -> None:
    assert problem(b"{}", BackendReplace).field == "weight"
    assert problem(b'{"weight": 2, "state": "enabled"}', BackendReplace).field == "state"
    err = problem(b"{}", BackendPatch)
    assert (err.field, err.detail) == ("body", "give at least one of weight, state")
    assert msgspec.json.decode(b'{"state": "draining"}', type=BackendPatch).weight is None


def test_algorithm_update() -> None:
    setting = msgspec.json.decode(b'{"algorithm": "ip_hash", "hash_key": "cookie:sid"}', type=AlgorithmUpdate)
    assert (setting.to_setting().name, setting.to_setting().hash_key) == ("ip_hash", "cookie:sid")
    assert problem(b'{"algorithm": "random"}', AlgorithmUpdate).field == "algorithm"
    assert problem(b'{"algorithm": "p2c", "hash_key": "ip"}', AlgorithmUpdate).field == "hash_key"
    assert problem(b'{"algorithm": "p2c", "hash_epsilon": 11}', AlgorithmUpdate).field == "hash_epsilon"
    assert problem(b'{"algorithm": "p2c", "slow_start_sec": -1}', AlgorithmUpdate).field == "slow_start_sec"
