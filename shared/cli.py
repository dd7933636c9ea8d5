"""The ``gobalancer`` command."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import yaml

from shared.config import Config, ConfigError, effective_settings, load_config
from shared.config.routing import precedence
from shared.redis_server import INSTALL_HINT, find_redis_server


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(f"# {args.file}: OK. Effective settings (environment applied, secrets redacted):")
    print(yaml.safe_dump(effective_settings(config), sort_keys=False, default_flow_style=False), end="")
    if config.routes:
        print("\n".join(route_order(config)))
    return 0


def route_order(config: Config) -> list[str]:
    """The route table as the proxy tries it (YAML comments, so the output stays a YAML document)."""
    lines = ["# Routes in the order they are tried (the first that matches wins):"]
    for n, i in enumerate(precedence(config.routes), 1):
        route = config.routes[i]
        conditions = [f"host {route.host}" if route.host else "any host", f"path_prefix {route.path_prefix}"]
        if route.methods:
            conditions.append("methods " + ",".join(route.methods))
        conditions += [f"{name}: {value}" for name, value in route.headers.items()]
        lines.append(f"#   {n}. routes[{i}] {route.name}: {'; '.join(conditions)} -> pool {route.pool}")
    unmatched = f"pool {config.unmatched_pool}" if config.unmatched_pool else "404"
    lines.append(f"#   no route matches -> {unmatched}")
    return lines


def _cmd_settings_reference(args: argparse.Namespace) -> int:
    from shared.settings_reference import render

    text = render()
    if args.output is None:
        print(text, end="")
        return 0
    try:
        with open(args.output, encoding="utf-8") as f:
            current: str | None = f.read()
    except OSError:
        current = None
    if args.check:
        if current != text:
            print(
                f"{args.output} is not up to date: run gobalancer settings-reference --output {args.output}",
                file=sys.stderr,
            )
            return 1
        return 0
    if current != text:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from shared.launcher import run_up

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if not config.redis.url and find_redis_server() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    return run_up(config, args.config, args.proxies, exit_with_parent=args.exit_with_parent)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gobalancer", description="GoBalancer: an HTTP/TCP load balancer")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole suite locally")
    up.add_argument("--config", default=os.environ.get("GOBALANCER_CONFIG"), help="YAML config file")
    up.add_argument("--proxies", type=int, default=1, help="number of proxy replicas (default 1)")
    up.add_argument(
        "--exit-with-parent",
        nargs="?",
        const=0,
        type=int,
        metavar="PID",
        help="stop the suite when its parent process (PID, if given, as a check) exits (make run uses it)",
    )
    up.set_defaults(func=_cmd_up)

    check = sub.add_parser("check-config", help="validate a config file and print the effective settings")
    check.add_argument("file")
    check.set_defaults(func=_cmd_check_config)

    reference = sub.add_parser(
        "settings-reference", help="print (or write) the settings reference generated from the config schema"
    )
    reference.add_argument("--output", metavar="FILE", help="write it to FILE (docs/settings.md) instead of stdout")
    reference.add_argument("--check", action="store_true", help="with --output: exit 1 if FILE is not up to date")
    reference.set_defaults(func=_cmd_settings_reference)

    from shared import admin_cli

    admin_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
