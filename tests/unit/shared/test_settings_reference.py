"""The settings reference and the annotated example follow the config schema (issue 17.7).

After a setting is added to shared/config/schema.py: add it, with a comment, to config/config.yaml, then
regenerate the reference with `gobalancer settings-reference --output docs/settings.md`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from shared.config import Config, env_settings, load_config, to_builtins
from shared.settings_reference import EXAMPLE, ITEM, KEY, comment_for, example_comments, render, settings

ROOT = Path(__file__).parents[3]


def _lookup(data: Any, path: str) -> tuple[bool, Any]:
    """(present, value) of a dotted path in parsed YAML; ``[]`` looks into the list's first item, ``<name>``
    into the mapping's first value."""
    node = data
    for part in path.replace(ITEM, "." + ITEM).split("."):
        if part == ITEM:
            if not isinstance(node, list) or not node:
                return False, None
            node = node[0]
        elif part == KEY:
            if not isinstance(node, dict) or not node:
                return False, None
            node = next(iter(node.values()))
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def test_the_committed_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert committed == render(), (
        "docs/settings.md is stale: run gobalancer settings-reference --output docs/settings.md"
    )


def test_every_setting_is_in_the_reference_with_its_variable() -> None:
    text = render()
    found = settings()
    variables = {s.env for s in found if s.env}
    leaves = {name for name, path in env_settings().items() if _is_leaf(path)}
    assert leaves <= variables
    for s in found:
        assert f"| `{s.path}` |" in text
        if s.env:
            assert f"`{s.env}`" in text


def _is_leaf(path: tuple[str, ...]) -> bool:
    value: Any = to_builtins(Config())
    for part in path:
        value = value[part]
    return not isinstance(value, dict)


def test_the_example_covers_and_explains_every_setting() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    comments = example_comments(text)
    missing = [s.path for s in settings() if not _lookup(data, s.path)[0]]
    assert not missing, f"config/config.yaml leaves out {missing}: add each, with a comment saying what it does"
    unexplained = [s.path for s in settings() if not comment_for(comments, s.path)]
    assert not unexplained, f"config/config.yaml has no comment for {unexplained}"


def test_the_example_shows_the_defaults_unless_it_says_otherwise() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    comments = example_comments(text)
    example = to_builtins(load_config(EXAMPLE, {}))
    defaults = to_builtins(Config())
    for s in settings():
        if ITEM in s.path or KEY in s.path or "not a default" in comments.get(s.path, "").lower():
            continue
        assert _lookup(example, s.path)[1] == _lookup(defaults, s.path)[1], (
            f"{s.path}: the example's value is not the default; say 'not a default' in its comment"
        )


def test_comments_above_after_and_continued() -> None:
    text = (
        "# header\n\n"
        "# about a\n"
        "a: 1          # first\n"
        "              # continued\n"
        "sec:\n"
        "  # about b\n"
        "  b: 'x # not a comment'  # real\n"
        "items:\n"
        "  - name: n   # the name\n"
        "    size: 2   # the size\n"
    )
    assert example_comments(text) == {
        "a": "about a first continued",
        "sec": "",
        "sec.b": "about b real",
        "items": "",
        "items[].name": "the name",
        "items[].size": "the size",
    }
