"""Property-based fuzzing: the proxy's request framing, and the config loader.

* ``parse_request_head`` / ``check_incomplete_head`` / ``ChunkedDecoder`` raise nothing but
  ``HttpError`` on arbitrary bytes; a head they accept has exactly one body framing, and the head the
  proxy sends upstream parses back to the same request with the same framing.
* ``ChunkedDecoder`` decodes any chunked body split at any points, and leaves the bytes after it.
* ``load_config`` raises nothing but ``ConfigError`` for arbitrary YAML, for documents shaped like the
  real config with wrong values, and for arbitrary environment overrides.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.proxy.http.headers import upstream_request_head
from services.proxy.http.parser import (
    ChunkedDecoder,
    HttpError,
    check_incomplete_head,
    frame_chunk,
    parse_request_head,
)
from shared.config import Config, ConfigError, env_settings, load_config, to_builtins
from tests.reliability.conftest import Results

# RELIABILITY_FUZZ_EXAMPLES=5000 for a deeper run than CI's.
FUZZ = settings(
    max_examples=int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1,
                max_size=12)  # fmt: skip
# Field values: mostly printable, sometimes the bytes smuggling is made of.
VALUE = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
    st.sampled_from(
        [
            "chunked",
            "Chunked",
            " chunked",
            "chunked ",
            "identity",
            "gzip, chunked",
            "chunked, chunked",
            "5",
            "-5",
            "+5",
            "0x5",
            "5,5",
            "",
            "\tchunked",
            "chunked\x0b",
            "99999999999999999999",
        ]
    ),
)
NAME = st.one_of(
    TOKEN,
    st.sampled_from(
        [
            "Content-Length",
            "Transfer-Encoding",
            "content-length",
            "TRANSFER-ENCODING",
            "Host",
            "Connection",
            "Upgrade",
            "Transfer-Encoding ",
            " Transfer-Encoding",
            "Content_Length",
        ]
    ),
)
FIELDS = st.lists(st.tuples(NAME, VALUE), max_size=8)
TARGET = st.one_of(st.just("/"), st.text(alphabet="/abc?=&%0123", min_size=1, max_size=20).map(lambda t: "/" + t))


def build_head(method: str, target: str, minor: int, fields: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.{minor}", *(f"{n}: {v}" for n, v in fields)]
    return "\r\n".join(lines).encode("latin-1")


def framing(req: Any) -> tuple[bool, int | None]:
    return req.chunked, req.content_length


@FUZZ
@given(st.binary(max_size=400))
def test_parser_arbitrary_bytes(data: bytes) -> None:
    try:
        check_incomplete_head(data, 32768, 8192)
        parse_request_head(data, 8192)
    except HttpError as exc:
        assert 400 <= exc.status < 500


@FUZZ
@given(TOKEN, TARGET, st.sampled_from([0, 1]), FIELDS)
def test_accepted_heads_are_unambiguous(method: str, target: str, minor: int, fields: list[tuple[str, str]]) -> None:
    head = build_head(method, target, minor, fields)
    try:
        req = parse_request_head(head, 8192)
    except HttpError as exc:
        assert exc.status == 400
        return
    names = [n.lower() for n, _ in fields]
    # One framing only: never both, never a repeated Content-Length, never TE in HTTP/1.0.
    assert not (req.chunked and req.content_length is not None)
    assert names.count("content-length") <= 1
    if "transfer-encoding" in names:
        assert req.chunked and "content-length" not in names and minor == 1
    if req.content_length is not None:
        assert str(req.content_length) == next(v.strip(" \t") for n, v in fields if n.lower() == "content-length")
    # What goes upstream parses back to the same request with the same framing.
    out = upstream_request_head(req, "127.0.0.1", b"http", b"rid", b"backend:80", tunnel=False)
    assert out.endswith(b"\r\n\r\n")
    again = parse_request_head(out[:-4], 8192)
    assert (again.method, again.target) == (req.method, req.target)
    assert framing(again) == framing(req)


CHUNKS = st.lists(st.binary(min_size=1, max_size=50), max_size=6)


@FUZZ
@given(CHUNKS, st.lists(st.integers(min_value=0, max_value=400), max_size=6), st.binary(max_size=20))
def test_chunked_roundtrip_any_split(chunks: list[bytes], cuts: list[int], after: bytes) -> None:
    body = b"".join(b"".join(frame_chunk(c)) for c in chunks) + b"0\r\n\r\n"
    stream = body + after
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    decoder = ChunkedDecoder()
    out: list[bytes] = []
    consumed = 0
    for piece in pieces:
        if decoder.done:
            break
        data, used = decoder.feed(piece)
        out += data
        consumed += used
    assert decoder.done
    assert b"".join(out) == b"".join(chunks)
    assert consumed == len(body)


@FUZZ
@given(st.lists(st.binary(max_size=60), max_size=5))
def test_chunked_decoder_arbitrary_bytes(pieces: list[bytes]) -> None:
    decoder = ChunkedDecoder()
    try:
        for piece in pieces:
            _, used = decoder.feed(piece)
            assert 0 <= used <= len(piece)
    except HttpError as exc:
        assert exc.status == 400


# -- the config loader ---------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["500ms", "2s", "-1s", "1h", "round_robin", "127.0.0.1:80", ":0", "[::1]:99999", "redis://x"]),
)
ANY = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                   max_leaves=10)  # fmt: skip


def _shaped(template: Any) -> st.SearchStrategy[Any]:
    """Documents shaped like the real config (its keys), with values drawn from anything."""
    if isinstance(template, dict):
        return st.fixed_dictionaries({}, optional={k: st.one_of(_shaped(v), ANY) for k, v in template.items()})
    if isinstance(template, list):
        return st.lists(st.one_of(ANY, st.fixed_dictionaries({}, optional={"address": ANY, "weight": ANY})), max_size=3)
    return ANY


SHAPED = _shaped({**to_builtins(Config()), "backends": []})


def _load(text: str, environ: dict[str, str] | None = None) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        load_config(f.name, environ=environ or {})
    except ConfigError:
        pass  # the only exception allowed
    finally:
        os.unlink(f.name)


@FUZZ
@given(st.text(max_size=300))
def test_config_arbitrary_text(text: str) -> None:
    _load(text)


@FUZZ
@given(ANY)
def test_config_arbitrary_yaml(data: Any) -> None:
    _load(yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(SHAPED)
def test_config_shaped_like_config(data: Any) -> None:
    _load(yaml.safe_dump(data, allow_unicode=True))


ENV_NAMES = sorted(env_settings())


@FUZZ
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=20), max_size=4))
def test_config_arbitrary_environment(environ: dict[str, str]) -> None:
    _load("", {k: v.replace("\x00", "") for k, v in environ.items()})


def test_config_error_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('"a\\nFAKE: injected": 1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ={})
    assert "\n" not in str(caught.value), str(caught.value)


# Examples each property was actually called with, counted by a wrapper around its inner test (how
# Hypothesis lets a runner wrap the test body), so the budget below checks what ran, not a setting.
EXAMPLES: dict[str, int] = {}


def _property_tests() -> dict[str, Any]:
    return {name: f for name, f in globals().items() if name.startswith("test_") and hasattr(f, "hypothesis")}


def _count_examples(name: str, prop: Any) -> None:
    inner = prop.hypothesis.inner_test

    def counted(*args: Any, **kwargs: Any) -> Any:
        EXAMPLES[name] = EXAMPLES.get(name, 0) + 1
        return inner(*args, **kwargs)

    prop.hypothesis.inner_test = counted


for _name, _prop in _property_tests().items():
    _count_examples(_name, _prop)


def test_fuzz_budget(results: Results) -> None:
    """Every property above ran its full budget of examples (the properties do the asserting); run
    alone, this runs them first."""
    properties = _property_tests()
    for name, prop in properties.items():
        if name not in EXAMPLES:
            prop()
    short = {name: EXAMPLES.get(name, 0) for name in properties if EXAMPLES.get(name, 0) < FUZZ.max_examples}
    results.record("properties fuzzed", len(properties), target=">= 8", ok=len(properties) >= 8)
    results.record(
        "fewest examples run by a property",
        min(EXAMPLES.get(name, 0) for name in properties),
        target=f">= {FUZZ.max_examples}",
        ok=not short,
    )
    assert len(properties) >= 8, sorted(properties)
    assert not short, f"properties that ran fewer than {FUZZ.max_examples} examples: {short}"
