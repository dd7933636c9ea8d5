"""``python -m bench NAME [options]``: run the benchmark module ``bench/NAME.py`` (see bench/README.md)."""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m bench {proxy,policies,bytecodes,coordination,health,metrics_overhead,admin,churn}"
            " [options]   (python -m bench NAME --help)"
        )
        return 0 if args else 2
    name, rest = args[0], args[1:]
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError:
        print(f"python -m bench: no benchmark named {name!r}", file=sys.stderr)
        return 2
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
