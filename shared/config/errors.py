"""Errors: :class:`ConfigError`, and the translation of msgspec's messages into a field and a readable problem.

msgspec reports ``PROBLEM - at `$.PATH```. The patterns that take such a message apart live here once, for
the configuration loader and for the admin API's request bodies (``services/admin/problems.py``):
:func:`split_msgspec` (problem, path), :data:`UNKNOWN_FIELD`, :data:`MISSING_FIELD`, :func:`named_field`
(a ``__post_init__`` check's ``"field: problem"``) and :func:`soften` (msgspec's capitals in lower case).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, get_args, get_origin

import msgspec

from shared.config.schema import strip_annotated, struct_fields

_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
# A Struct's own check names its field first: "field: problem", or a path under it ("routes[2].pool: ...").
NAMED_FIELD = re.compile(r"^(?P<field>[a-z_]+)(?P<under>(?:\[\d+\]|\.[A-Za-z0-9_-]+)*): (?P<problem>.*)$", re.S)


class ConfigError(Exception):
    """A configuration problem; ``str()`` is a single line naming source, field path and problem."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        source, path, problem = (one_line(x) for x in (source, path, problem))
        self.source, self.path, self.problem = source, path, problem
        super().__init__(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")


def one_line(text: str) -> str:
    """Control characters escaped (a YAML key may hold a newline): an error stays one log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def split_msgspec(err: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's message as (problem, path): ``"Expected `int`"``, ``"backends[0].weight"`` (``""``: the root).
    A dict's key is ``[...]`` in the path (msgspec does not say which)."""
    m = _AT.match(str(err))
    assert m is not None
    return m.group("problem"), (m.group("path") or "").lstrip(".")


def named_field(problem: str) -> tuple[str, str, str] | None:
    """``"field: problem"`` (or ``"field[1].sub: problem"``) as (field, path under it, problem); None otherwise."""
    m = NAMED_FIELD.match(problem)
    return None if m is None else (m.group("field"), m.group("under"), m.group("problem"))


def soften(problem: str) -> str:
    """msgspec's wording for a reader: ``expected `int```, ``invalid value 'x'``."""
    return problem.replace("Expected", "expected").replace("Invalid enum value", "invalid value")


def join(path: str, field: str) -> str:
    """``a.b`` + ``c`` -> ``a.b.c``; ``""`` + ``c`` -> ``c``; ``a`` + ``[0]`` -> ``a[0]``."""
    if not path or field.startswith("["):
        return path + field
    return f"{path}.{field}" if field else path


_PART = re.compile(r"\.?([^.\[\]]+)|\[(\d+|\.\.\.)\]")


def type_at(root: Any, path: str) -> Any:
    """The declared type at an error path such as ``backends[0].weight`` under ``root`` (None if unknown)."""
    tp: Any = root
    for name, index in _PART.findall(path):
        tp = strip_annotated(tp)
        if index:  # a list index, or a dict's key
            args = get_args(tp)
            tp = args[-1] if args else None
            continue
        fields = struct_fields(tp)
        if fields is None or name not in fields:
            return None
        tp = fields[name]
    return strip_annotated(tp)


def allowed_fields(root: Any, path: str) -> list[str]:
    """The field names of the Struct at ``path`` (of a list's or dict's items there)."""
    tp = type_at(root, path)
    if get_origin(tp) in (list, dict):
        tp = strip_annotated(get_args(tp)[-1])
    return list(struct_fields(tp) or {})


def describe(err: msgspec.ValidationError, root: Any) -> tuple[str, str]:
    """A decoding error of ``root`` as (field path, problem): unknown fields list the allowed ones, bad
    enum values the choices, and a Struct's own check ("field: problem") is moved onto its field."""
    problem, path = split_msgspec(err)
    if unknown := UNKNOWN_FIELD.match(problem):
        allowed = allowed_fields(root, path)
        path = join(path, unknown.group("field"))
        problem = "unknown field" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif problem.startswith("Invalid enum value"):
        choices = [str(a) for a in get_args(type_at(root, path))]
        problem = soften(problem)
        if choices:
            problem += f" (expected one of: {', '.join(choices)})"
    else:
        problem = soften(problem)
        named = named_field(problem)
        if named and named[0] in allowed_fields(root, path):
            path, problem = join(path, named[0] + named[1]), named[2]
    return path, problem


def resolve_keys(path: str, data: Any, root: Any, convert: Callable[[Any, Any], object]) -> str:
    """``pools[...].algorithm`` -> ``pools.web.algorithm``: msgspec does not say which key of a dict failed,
    so each ``[...]`` is resolved to the first key whose value alone fails ``convert(value, type)`` (left as
    it is when none does)."""
    done, rest = "", path
    while "[...]" in rest:
        head, _, rest = rest.partition("[...]")
        done += head
        node: Any = data
        for name, index in _PART.findall(done):
            if isinstance(node, dict) and not index:
                node = node.get(name)
            elif isinstance(node, list) and index.isdigit() and int(index) < len(node):
                node = node[int(index)]
            else:
                return path
        item_type = get_args(type_at(root, done))[-1] if isinstance(node, dict) else None
        key = next((k for k, v in node.items() if _fails(convert, v, item_type)), None) if item_type else None
        done += "[...]" if key is None else f".{key}"
    return done + rest


def _fails(convert: Callable[[Any, Any], object], value: Any, tp: Any) -> bool:
    try:
        convert(value, tp)
    except (msgspec.ValidationError, TypeError, ValueError):
        return True
    return False
