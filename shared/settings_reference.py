"""The settings reference (docs/settings.md), generated from the config schema.

Every setting's key, type, default and environment variable come from the schema itself
(``shared.config.Config`` and its Structs, their type hints and a default instance); its description
from the comment that annotates the setting in the example file, ``config/config.yaml``. So a setting
added to the schema appears here by itself once the reference is regenerated::

    gobalancer settings-reference --output docs/settings.md

and ``tests/unit/shared/test_settings_reference.py`` fails while the committed file is stale, or while
the example leaves a setting out or unexplained.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
import yaml

from shared.config import ENV_PREFIX, Config, Seconds, to_builtins

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "config.yaml"
ITEM = "[]"  # a list's items in a path: backends[].address
KEY = "<name>"  # a mapping's values in a path: pools.<name>.algorithm


@dataclass(frozen=True)
class Setting:
    path: str  # dotted, list items as ``[]``: "health_check.interval_sec", "backends[].weight"
    type: str
    default: str
    env: str  # "" for a list item's field (set with the list's variable)


def _struct_hints(tp: Any) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(tp)}


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _strip(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    metas: list[msgspec.Meta] = []
    while get_origin(tp) is Annotated:
        args = get_args(tp)
        tp = args[0]
        metas += [m for m in args[1:] if isinstance(m, msgspec.Meta)]
    return tp, metas


def _bounds(metas: list[msgspec.Meta]) -> str:
    lo = next((f">= {m.ge}" for m in metas if m.ge is not None), "") or next(
        (f"> {m.gt}" for m in metas if m.gt is not None), ""
    )
    hi = next((f"<= {m.le}" for m in metas if m.le is not None), "") or next(
        (f"< {m.lt}" for m in metas if m.lt is not None), ""
    )
    return ", ".join(x for x in (lo, hi) if x)


def describe_type(hint: Any) -> str:
    """A reader's name for a setting's type: ``integer (>= 1)``, ``duration``, ``one of: a, b``..."""
    tp, metas = _strip(hint)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in get_args(tp) if a is not type(None)]
        nullable = type(None) in get_args(tp)
        return " or ".join(parts) + (" or null" if nullable else "")
    if origin is Literal:
        return "one of: " + ", ".join(repr(a) if a == "" else str(a) for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp)
        item, _ = _strip(item)
        if _is_struct(item):
            return "list of {" + ", ".join(_struct_hints(item)) + "}"
        return f"list of {describe_type(item)}"
    if origin is dict:
        value, _ = _strip(get_args(tp)[1])
        if _is_struct(value):
            return "mapping of name to {" + ", ".join(_struct_hints(value)) + "}"
        return f"mapping of {describe_type(get_args(tp)[0])} to {describe_type(value)}"
    if _is_struct(tp):
        return "{" + ", ".join(_struct_hints(tp)) + "}"
    bounds = _bounds(metas)
    name = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))
    if tp is Seconds:
        name = "duration (seconds, or '500ms', '2s', '1m')"
    return f"{name} ({bounds})" if bounds else name


def _default_text(value: Any) -> str:
    if isinstance(value, str):
        return '`""`' if value == "" else f"`{value}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"


def settings(tp: Any = Config, prefix: tuple[str, ...] = (), defaults: Any = None, env: bool = True) -> list[Setting]:
    """Every leaf setting of the schema, in declaration order (a nested section's after its parent's)."""
    if defaults is None:
        defaults = to_builtins(tp())
    out: list[Setting] = []
    for name, hint in _struct_hints(tp).items():
        path = (*prefix, name)
        inner, _ = _strip(hint)
        variable = ENV_PREFIX + "_".join(p for p in path if p != ITEM).upper() if env else ""
        if _is_struct(inner):
            out += settings(inner, path, defaults[name], env)
            continue
        out.append(Setting(_dotted(path), describe_type(hint), _default_text(defaults[name]), variable))
        if get_origin(inner) in (list, dict):
            item, _ = _strip(get_args(inner)[-1])
            if _is_struct(item):
                out += _item_settings(item, (*path, ITEM if get_origin(inner) is list else KEY))
    return out


def _item_settings(tp: Any, prefix: tuple[str, ...]) -> list[Setting]:
    """A list item's fields: their defaults are the Struct's own (required fields have none)."""
    out: list[Setting] = []
    for field in msgspec.structs.fields(tp):
        if _is_struct(_strip(field.type)[0]):
            default = "(its fields' defaults)"
        elif field.default is not msgspec.NODEFAULT:
            default = _default_text(to_builtins(field.default))
        elif field.default_factory is not msgspec.NODEFAULT:
            default = _default_text(to_builtins(field.default_factory()))
        else:
            default = "(required)"
        out.append(Setting(_dotted((*prefix, field.name)), describe_type(field.type), default, ""))
    return out


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path).replace("." + ITEM, ITEM)


def comment_for(comments: dict[str, str], path: str) -> str:
    """A setting's comment in the example; a ``<name>`` in the path stands for any key the example uses."""
    if KEY not in path:
        return comments.get(path, "")
    pattern = re.compile(re.escape(path).replace(re.escape(KEY), r"[^.\[\]]+"))
    return next((text for key, text in comments.items() if text and pattern.fullmatch(key)), "")


# -- the annotated example ---------------------------------------------------------------------

_KEY = re.compile(r"^(?P<indent> *)(?P<dash>- +)?(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


def _trailing_comment(rest: str) -> tuple[str, int]:
    """The comment after a value (text, column in ``rest``), quotes respected; ("", -1) if none."""
    quote = ""
    for i, c in enumerate(rest):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[i + 1 :].strip(), i
    return "", -1


def example_comments(text: str) -> dict[str, str]:
    """Each key's description in an annotated YAML file: the comment lines right above it (no blank
    line between) and the comment after its value, continued by comment lines aligned with that one."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, path segment)
    above: list[str] = []
    last: tuple[str, int] | None = None  # (path, column of its trailing comment)
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            above, last = [], None
            continue
        if stripped.startswith("#"):
            column = len(line) - len(line.lstrip())
            if last is not None and column == last[1]:
                out[last[0]] = f"{out[last[0]]} {stripped[1:].strip()}".strip()
            else:
                above.append(stripped[1:].strip())
                last = None
            continue
        m = _KEY.match(line)
        if m is None:
            above, last = [], None
            continue
        indent = len(m.group("indent"))
        if m.group("dash"):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, ITEM))
            indent += len(m.group("dash"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        path = _dotted(tuple(segment for _, segment in stack))
        comment, column = _trailing_comment(m.group("rest"))
        description = " ".join([*above, comment]).strip()
        if description and not out.get(path):
            out[path] = description
        out.setdefault(path, "")
        above = []
        last = (path, len(line) - len(m.group("rest")) + column) if column >= 0 else None
    return out


# -- rendering ---------------------------------------------------------------------------------

HEADER = """# Settings reference

Generated from the config schema (`shared/config/schema.py`) by `gobalancer settings-reference --output
docs/settings.md`; descriptions are the comments of the annotated example, `config/config.yaml`.
Do not edit by hand: change the schema or the example, then regenerate (a test fails while this file is stale).

Every setting is optional. Each one can also be set from the environment: the variable named below
(`GOBALANCER_` + the path in upper case joined by `_`), read as a YAML scalar (`GOBALANCER_BACKENDS` takes a
JSON/YAML list; a section's variable, such as `GOBALANCER_PROXY_TLS`, a YAML mapping). String settings keep the
variable's raw text. The environment wins over the file.
"""


_NOT_DEFAULT = re.compile(r"(?i)\bnot a default(?: \([^)]*\))?[.:;]?\s*")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _description(comment: str) -> str:
    """The example's comment about the setting (its remark that a value is not the default dropped)."""
    return _cell(_NOT_DEFAULT.sub("", comment).strip())


def render(comments: dict[str, str] | None = None) -> str:
    """The whole reference as Markdown: one table per top-level section."""
    if comments is None:
        comments = example_comments(EXAMPLE.read_text(encoding="utf-8"))
    sections: dict[str, list[Setting]] = {}
    for setting in settings():
        head = setting.path.split(".", 1)[0].split(ITEM, 1)[0]
        section = head if "." in setting.path else ""
        sections.setdefault(section, []).append(setting)
    lines = [HEADER]
    for section, rows in sections.items():
        lines.append(f"## `{section}`" if section else "## Top level")
        lines.append("")
        if section and comments.get(section):
            lines += [_description(comments[section]), ""]
        nested = sorted({s.path.rsplit(".", 1)[0] for s in rows if s.path.count(".") > 1})
        notes = [f"- `{n}`: {_description(comment_for(comments, n))}" for n in nested if comment_for(comments, n)]
        if notes:
            lines += [*notes, ""]
        lines.append("| setting | type | default | environment | description |")
        lines.append("|---|---|---|---|---|")
        for s in rows:
            env = f"`{s.env}`" if s.env else ("(in the mapping's)" if KEY in s.path else "(in the list's)")
            description = _description(comment_for(comments, s.path))
            lines.append(f"| `{s.path}` | {_cell(s.type)} | {_cell(s.default)} | {env} | {description} |")
        lines.append("")
    return "\n".join(lines)
