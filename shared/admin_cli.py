"""`gobalancer backends ...`, `gobalancer algorithm ...`, `gobalancer pools ...`, `gobalancer routes ...` and
`gobalancer rate-limits ...`: a client of the admin API.

Talks HTTP to the admin service only (never to Redis, never importing ``services``). The URL and the
token come from ``--url``/``--token`` or ``$GOBALANCER_ADMIN_URL``/``$GOBALANCER_ADMIN_TOKEN``.
Every failure (a malformed URL, a refused connection, a problem from the API, an unusable token) is
one line on stderr and exit status 1: :class:`ApiError` is the only error a command lets out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import quote

from shared.config import ALGORITHMS, CLI_TOKEN_ENV, CLI_URL_ENV

DEFAULT_URL = "http://127.0.0.1:8081"
TIMEOUT = 10.0


class ApiError(Exception):
    """One line for the user: the problem's detail (or what went wrong reaching the API).

    ``status`` and ``field`` are the HTTP status and the problem's ``field`` when the API answered."""

    def __init__(self, message: str, *, status: int = 0, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.field = status, field


def check_url(url: str) -> str:
    """``url`` without a trailing slash when it is an http(s) URL with a host (and a valid port)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ApiError(f"invalid admin URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(f"invalid admin URL {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    return url.rstrip("/")


def check_token(token: str) -> str:
    """A token an HTTP header can carry (visible ASCII); never echoed back in the error."""
    if token and not all("!" <= c <= "~" for c in token):
        raise ApiError("the token holds spaces, control or non-ASCII characters: an HTTP header cannot carry it")
    return token


class AdminClient:
    """A small JSON client on the standard library (the CLI must not need dev-only packages).

    Proxies from the environment are ignored: the admin API is usually on loopback.
    """

    def __init__(self, url: str, token: str = "", *, timeout: float = TIMEOUT) -> None:
        self.url = check_url(url)
        token = check_token(token)
        self.timeout = timeout
        self.headers = {"Accept": "application/json, application/problem+json", "User-Agent": "gobalancer-cli"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def close(self) -> None:
        self._opener.close()

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> Any:
        target = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            request = urllib.request.Request(target, data=data, headers=headers, method=method)
            with self._opener.open(request, timeout=self.timeout) as response:
                status, content = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise _problem_error(exc.code, exc.read(), exc.reason) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ApiError(_one_line(f"cannot reach the admin API at {self.url}: {reason}")) from None
        if status == 204 or not content:
            return None
        try:
            return json.loads(content)
        except ValueError:
            raise ApiError(f"the admin API at {self.url} answered HTTP {status} with no JSON") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _problem_error(status: int, content: bytes, reason: str) -> ApiError:
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("detail"):
        field = data.get("field")
        detail = _one_line(str(data["detail"]))
        return ApiError(f"{detail} (HTTP {status})", status=status, field=field if isinstance(field, str) else None)
    text = content.decode(errors="replace").strip().splitlines()
    return ApiError(_one_line(f"HTTP {status}: {text[0] if text else reason}"), status=status)


def backend_path(address: str, action: str = "", pool: str = "") -> str:
    """``/backends/ADDRESS[/action]`` (the default pool), or ``/pools/POOL/backends/...`` with ``pool``."""
    base = f"/pools/{quote(pool, safe='')}/backends/" if pool else "/backends/"
    path = base + quote(address, safe="")
    return f"{path}/{action}" if action else path


def pool_path(name: str, rest: str = "") -> str:
    return f"/pools/{quote(name, safe='')}{rest}"


# -- output ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces (numbers right-aligned)."""
    cells = [[str(c) for c in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if numeric[i] and rows else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


BACKEND_COLUMNS = ("ADDRESS", "WEIGHT", "STATE", "HEALTH", "ALIVE", "CONNS", "ORIGIN", "EJECTED", "OVERRIDE")


def _override(b: dict[str, Any]) -> str | None:
    """``weight=3 (source 1)``: the operator's values on a discovery-owned backend, and the source's."""
    override = b.get("override") or {}
    discovered = b.get("discovered") or {}
    parts = [f"{k}={v}" + (f" (source {discovered[k]})" if k in discovered else "") for k, v in override.items()]
    return ", ".join(parts) or None


def backend_rows(items: Sequence[dict[str, Any]]) -> list[list[object]]:
    return [
        [
            b["address"],
            b["weight"],
            b["state"],
            b["health"],
            b["alive"],
            b["conn_count"],
            b["origin"],
            b["ejected"],
            _override(b),
        ]
        for b in items
    ]


def _print_backends(items: Sequence[dict[str, Any]], out: TextIO) -> None:
    if not items:
        print("no backends", file=out)
        return
    print(table(BACKEND_COLUMNS, backend_rows(items)), file=out)


def _print_backend(data: dict[str, Any], out: TextIO) -> None:
    _print_backends([data], out)


def _print_state_change(change: dict[str, Any], out: TextIO) -> None:
    _print_backends([change["backend"]], out)
    if change["state"] == "draining":
        print(f"draining {change['address']}: {change['in_flight']} request(s) still in flight", file=out)


def _print_algorithm(data: dict[str, Any], out: TextIO) -> None:
    options = {k: data.get(k) for k in ("hash_key", "hash_epsilon", "slow_start_sec") if data.get(k) is not None}
    rows: list[list[object]] = [["algorithm", data["algorithm"]], *[[k, v] for k, v in options.items()]]
    if data.get("changed") is not None:
        rows.append(["changed", bool(data["changed"])])
    print(table(("SETTING", "VALUE"), rows), file=out)


POOL_COLUMNS = ("POOL", "ALGORITHM", "BACKENDS", "USABLE", "HEALTH_CHECK", "OUTLIER")


def _print_pools(data: dict[str, Any], out: TextIO) -> None:
    rows: list[list[object]] = []
    for p in data["pools"]:
        check = p.get("health_check")
        outlier = p.get("outlier")
        rows.append(
            [
                p["name"],
                p["algorithm"]["name"],
                p["backends"],
                p["usable"],
                f"{check['type']} {check['path']}" if check else "(config)",
                f"{outlier['consecutive_failures']} failures" if outlier else "(config)",
            ]
        )
    print(table(POOL_COLUMNS, rows), file=out)


def _print_pool(data: dict[str, Any], out: TextIO) -> None:
    algorithm = data["algorithm"]
    rows: list[list[object]] = [["name", data["name"]], ["algorithm", algorithm["name"]]]
    rows += [[k, algorithm[k]] for k in ("hash_key", "hash_epsilon", "slow_start_sec") if algorithm.get(k) is not None]
    rows += [["backends", data["backends"]], ["usable", data["usable"]]]
    for section in ("health_check", "outlier"):
        values = data.get(section)
        if values is None:
            rows.append([section, "(the configuration's)"])
        else:
            rows += [[f"{section}.{k}", v] for k, v in values.items() if v is not None]
    if data.get("changed") is not None:
        rows.append(["changed", bool(data["changed"])])
    print(table(("SETTING", "VALUE"), rows), file=out)


ROUTE_COLUMNS = ("#", "ROUTE", "HOST", "PATH_PREFIX", "METHODS", "HEADERS", "POOL", "STRIP", "REWRITE_HOST")


def _print_routes(data: dict[str, Any], out: TextIO) -> None:
    rows: list[list[object]] = [
        [
            i,
            r["name"],
            r["host"] or "*",
            r["path_prefix"],
            ",".join(r["methods"]) or None,
            ",".join(f"{k}={v}" for k, v in r["headers"].items()) or None,
            r["pool"],
            r["strip_prefix"],
            r["rewrite_host"] or None,
        ]
        for i, r in enumerate(data["routes"])
    ]
    if rows:
        print(table(ROUTE_COLUMNS, rows), file=out)
    else:
        print("no routes", file=out)
    unmatched = data["default_pool"] or "404"
    print(f"unmatched requests: {unmatched}; source: {data['source']}", file=out)


def read_data(path: str) -> Any:
    """What a JSON or YAML file holds (``-``: stdin); an ApiError saying why it could not be read."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiError(_one_line(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")) from None
    try:
        return json.loads(text)
    except ValueError:
        import yaml  # (YAML only for what is not JSON: the rest of this client is the standard library)

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ApiError(_one_line(f"{path}: not YAML or JSON: {exc}")) from None


def read_table(path: str) -> dict[str, Any]:
    """A route table from a YAML or JSON file (``-``: stdin): ``{routes: [...], default_pool: ...}`` (a config
    file's keys) or a bare list of routes."""
    data = read_data(path)
    if isinstance(data, list):
        return {"routes": data}
    if not isinstance(data, dict) or "routes" not in data:
        raise ApiError(f"{path}: expected a list of routes, or a mapping with routes (and default_pool)")
    return {k: data[k] for k in ("routes", "default_pool") if k in data}


def _print_rate_limits(data: dict[str, Any], out: TextIO) -> None:
    rows = [
        [r["name"], r["applies_to"], r["key"], r["rate"], r["burst"], "closed" if r["fail_closed"] else "open"]
        for r in data["rules"]
    ]
    print(table(("RULE", "APPLIES_TO", "KEY", "RATE", "BURST", "REDIS_DOWN"), rows), file=out)
    line = f"source: {data['source']} (version {data['version']})"
    if data.get("changed") is not None:
        line += ", changed" if data["changed"] else ", unchanged"
    print(line, file=out)


def read_rules(path: str) -> list[Any]:
    """The rules in a YAML or JSON file (``-``: stdin): a list of rules, ``rules: [...]``, or a config file's
    ``rate_limits: {rules: [...]}`` (checked by the API, which names the field at fault)."""
    data = read_data(path)
    if isinstance(data, dict) and isinstance(data.get("rate_limits"), dict):
        data = data["rate_limits"]
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ApiError(f"{path}: expected a list of rules, 'rules: [...]' or 'rate_limits: {{rules: [...]}}'")
    return data


# -- commands ----------------------------------------------------------------------------------


def _run(args: argparse.Namespace, out: TextIO) -> None:
    client = AdminClient(args.url, args.token)
    try:
        _dispatch(client, args, out)
    finally:
        client.close()


def _dispatch(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    action = args.admin_action
    printer: Callable[[Any, TextIO], None]
    if action == "algorithm":
        if args.name is None:
            data = client.call("GET", "/algorithm")
        else:
            body: dict[str, Any] = {"algorithm": args.name}
            for option in ("hash_key", "hash_epsilon", "slow_start_sec"):
                if getattr(args, option) is not None:
                    body[option] = getattr(args, option)
            data = client.call("PUT", "/algorithm", body)
        printer = _print_algorithm
    elif action.startswith(("pools-", "routes-")):
        data, printer = _pools_and_routes(client, args, out)
        if data is None:
            return
    elif action == "rate-limits":
        if args.limits_action == "get":
            data = client.call("GET", "/rate-limits")
        elif args.limits_action == "set":
            data = client.call("PUT", "/rate-limits", {"rules": read_rules(args.file)})
        else:
            data = client.call("DELETE", "/rate-limits")
        printer = _print_rate_limits
    elif action == "list":
        data = client.call("GET", "/backends")
        printer = _print_backends
    elif action == "add":
        data = client.call("POST", "/backends", {"address": args.address, "weight": args.weight})
        printer = _print_backend
    elif action == "weight":
        data = client.call("PUT", backend_path(args.address), {"weight": args.weight})
        printer = _print_backend
    elif action in ("drain", "enable", "disable"):
        data = client.call("POST", backend_path(args.address, action))
        printer = _print_state_change
    elif action == "clear-override":
        data = client.call("DELETE", backend_path(args.address, "override"))
        printer = _print_backend
    elif action == "remove":
        try:
            client.call("DELETE", backend_path(args.address), params={"force": "true"} if args.force else None)
        except ApiError as exc:
            if exc.status == 409 and exc.field == "force":  # the API's hint names its query parameter
                raise ApiError(
                    f"backend {args.address} was found by discovery and may come back at its next reconcile; "
                    "add --force to remove it anyway (HTTP 409)",
                    status=409,
                    field="force",
                ) from None
            raise
        print(f"removed {args.address}", file=out)
        return
    else:  # pragma: no cover - argparse allows only the actions above
        raise ApiError(f"unknown action {action}")
    if args.json:
        print(json.dumps(data, indent=2), file=out)
    else:
        printer(data, out)


def _pools_and_routes(client: AdminClient, args: argparse.Namespace, out: TextIO) -> tuple[Any, Any]:
    """`pools ...` and `routes ...`: the answer and its printer (None: printed already)."""
    action = args.admin_action
    if action == "pools-list":
        return client.call("GET", "/pools"), _print_pools
    if action == "pools-get":
        return client.call("GET", pool_path(args.name)), _print_pool
    if action == "pools-create":
        algorithm: dict[str, Any] = {"name": args.algorithm}
        for option in ("hash_key", "hash_epsilon", "slow_start_sec"):
            if getattr(args, option) is not None:
                algorithm[option] = getattr(args, option)
        return client.call("POST", "/pools", {"name": args.name, "algorithm": algorithm}), _print_pool
    if action == "pools-delete":
        client.call("DELETE", pool_path(args.name))
        print(f"deleted pool {args.name}", file=out)
        return None, None
    if action == "pools-backends":
        return _pool_backends(client, args, out)
    if action == "routes-get":
        return client.call("GET", "/routes"), _print_routes
    if action == "routes-set":
        return client.call("PUT", "/routes", read_table(args.file)), _print_routes
    raise ApiError(f"unknown action {action}")  # pragma: no cover - argparse allows only the actions above


def _pool_backends(client: AdminClient, args: argparse.Namespace, out: TextIO) -> tuple[Any, Any]:
    verb, pool, address = args.verb, args.name, args.address
    if verb is None:
        return client.call("GET", pool_path(pool, "/backends")), _print_backends
    if address is None:
        raise ApiError(f"pools backends {pool} {verb}: give the backend's ADDRESS")
    if verb == "add":
        body = {"address": address, "weight": args.weight}
        return client.call("POST", pool_path(pool, "/backends"), body), _print_backend
    if verb == "remove":
        client.call("DELETE", backend_path(address, pool=pool), params={"force": "true"} if args.force else None)
        print(f"removed {address} from pool {pool}", file=out)
        return None, None
    return client.call("POST", backend_path(address, verb, pool=pool)), _print_state_change


def _command(args: argparse.Namespace) -> int:
    try:
        _run(args, sys.stdout)
    except ApiError as exc:
        print(f"gobalancer: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _weight(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight must be an integer 1-10000, got {text!r}") from None
    if not 1 <= value <= 10000:
        raise argparse.ArgumentTypeError(f"weight must be 1-10000, got {value}")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get(CLI_URL_ENV) or DEFAULT_URL,
        help=f"admin API URL (default: ${CLI_URL_ENV} or {DEFAULT_URL})",
    )
    common.add_argument(
        "--token",
        default=os.environ.get(CLI_TOKEN_ENV, ""),
        help=f"bearer token (default: ${CLI_TOKEN_ENV}, the admin.token setting's variable)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    return common


def register(sub: Any) -> None:
    """Add the admin subcommands to the `gobalancer` parser."""
    common = _common()
    backends = sub.add_parser("backends", help="list and change backends through the admin API")
    actions = backends.add_subparsers(dest="admin_action", required=True, metavar="ACTION")

    actions.add_parser("list", parents=[common], help="list backends")
    add = actions.add_parser("add", parents=[common], help="add a backend")
    add.add_argument("address", help="host:port ([IPv6]:port)")
    add.add_argument("--weight", type=_weight, default=1, help="weight 1-10000 (default 1)")
    remove = actions.add_parser("remove", parents=[common], help="remove a backend")
    remove.add_argument("address")
    remove.add_argument("--force", action="store_true", help="also remove a backend found by discovery")
    weight = actions.add_parser(
        "weight", parents=[common], help="set a backend's weight (on a discovered one: an operator override)"
    )
    weight.add_argument("address")
    weight.add_argument("weight", type=_weight)
    clear = actions.add_parser(
        "clear-override", parents=[common], help="drop the operator override: the discovery source's values again"
    )
    clear.add_argument("address")
    for name, text in (
        ("drain", "stop new traffic; in-flight requests finish"),
        ("enable", "take new traffic again"),
        ("disable", "no traffic at all"),
    ):
        parser = actions.add_parser(name, parents=[common], help=text)
        parser.add_argument("address")
    backends.set_defaults(func=_command)

    algorithm = sub.add_parser("algorithm", parents=[common], help="show or switch the balancing algorithm")
    algorithm.add_argument("name", nargs="?", choices=ALGORITHMS, metavar="NAME", help=", ".join(ALGORITHMS))
    algorithm.add_argument("--hash-key", dest="hash_key", help="ip_hash key: client_ip, header:NAME, cookie:NAME")
    algorithm.add_argument("--hash-epsilon", dest="hash_epsilon", type=float, help="bounded-load factor")
    algorithm.add_argument("--slow-start-sec", dest="slow_start_sec", type=float, help="slow start duration")
    algorithm.set_defaults(func=_command, admin_action="algorithm")

    pools = sub.add_parser("pools", help="list, create and delete pools and their backends through the admin API")
    pool_actions = pools.add_subparsers(dest="pools_action", required=True, metavar="ACTION")
    pool_actions.add_parser("list", parents=[common], help="every pool with its backends' counts").set_defaults(
        admin_action="pools-list"
    )
    get = pool_actions.add_parser("get", parents=[common], help="one pool's settings")
    get.add_argument("name")
    get.set_defaults(admin_action="pools-get")
    create = pool_actions.add_parser("create", parents=[common], help="create a pool")
    create.add_argument("name")
    create.add_argument("--algorithm", choices=ALGORITHMS, default="round_robin", metavar="NAME",
                        help=", ".join(ALGORITHMS) + " (default round_robin)")  # fmt: skip
    create.add_argument("--hash-key", dest="hash_key", help="ip_hash key: client_ip, header:NAME, cookie:NAME")
    create.add_argument("--hash-epsilon", dest="hash_epsilon", type=float, help="bounded-load factor")
    create.add_argument("--slow-start-sec", dest="slow_start_sec", type=float, help="slow start duration")
    create.set_defaults(admin_action="pools-create")
    delete = pool_actions.add_parser("delete", parents=[common], help="delete a pool (refused while in use)")
    delete.add_argument("name")
    delete.set_defaults(admin_action="pools-delete")
    members = pool_actions.add_parser(
        "backends", parents=[common], help="list a pool's backends, or add|remove|drain|enable|disable ADDRESS"
    )
    members.add_argument("name")
    members.add_argument("verb", nargs="?", choices=("add", "remove", "drain", "enable", "disable"), metavar="ACTION",
                         help="add, remove, drain, enable or disable (none: list)")  # fmt: skip
    members.add_argument("address", nargs="?", help="host:port ([IPv6]:port)")
    members.add_argument("--weight", type=_weight, default=1, help="add: weight 1-10000 (default 1)")
    members.add_argument("--force", action="store_true", help="remove: also a backend found by discovery")
    members.set_defaults(admin_action="pools-backends")
    pools.set_defaults(func=_command)
    limits = sub.add_parser("rate-limits", help="show or replace the rate-limit rules of every proxy")
    limit_actions = limits.add_subparsers(dest="limits_action", required=True, metavar="ACTION")
    limit_actions.add_parser("get", parents=[common], help="the rules in force (the store's, else the config file's)")
    put = limit_actions.add_parser("set", parents=[common], help="replace the rules from a YAML or JSON file")
    put.add_argument("file", metavar="FILE", help="a list of rules, 'rules: [...]' or a config file's rate_limits")
    limit_actions.add_parser("clear", parents=[common], help="drop the stored rules: the config file's apply again")
    limits.set_defaults(func=_command, admin_action="rate-limits")

    routes = sub.add_parser("routes", help="show or replace the route table through the admin API")
    route_actions = routes.add_subparsers(dest="routes_action", required=True, metavar="ACTION")
    route_actions.add_parser("get", parents=[common], help="the route table in force").set_defaults(
        admin_action="routes-get"
    )
    put = route_actions.add_parser(
        "set", parents=[common], help="replace the whole table from a YAML or JSON file (checked first)"
    )
    put.add_argument("file", help="routes: [...] and default_pool (a config file's keys), or a list; - = stdin")
    put.set_defaults(admin_action="routes-set")
    routes.set_defaults(func=_command)


__all__ = ["AdminClient", "ApiError", "backend_path", "pool_path", "read_table", "register", "table"]
