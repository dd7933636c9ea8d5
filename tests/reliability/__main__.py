"""``python -m tests.reliability [pytest args]``: run the reliability suite and print its table.

``python -m tests.reliability --show [--markdown]`` prints the table of the last run from
``artifacts/reliability.json`` without running anything.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.reliability.conftest import ARTIFACT, Row, format_table
from tests.reliability.suite import ROOT


def markdown(rows: list[Row]) -> str:
    out = ["| scenario | metric | value | target | ok |", "|---|---|---|---|---|"]
    for r in rows:
        value = f"{r.value} {r.unit}".strip()
        out.append(f"| {r.scenario} | {r.metric} | {value} | {r.target} | {'yes' if r.ok else 'NO'} |")
    return "\n".join(out)


def show(as_markdown: bool) -> int:
    if not ARTIFACT.exists():
        print(f"no {ARTIFACT.relative_to(ROOT)} yet: run `python -m tests.reliability` first", file=sys.stderr)
        return 1
    data = json.loads(ARTIFACT.read_text())
    rows = [Row(**r) for r in data["rows"]]
    print(f"# {data['generated_at']}, {data['machine']['cpus']} CPUs, Redis down for {data['redis_down_sec']} s")
    print(markdown(rows) if as_markdown else format_table(rows))
    return 0


def main(argv: list[str]) -> int:
    if "--show" in argv:
        return show("--markdown" in argv)
    return int(pytest.main([str(ROOT / "tests" / "reliability"), "-q", "-p", "no:cacheprovider", *argv]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
