"""Loading: the YAML file (duplicate keys refused), then the environment's overrides, then the schema.

Every setting can be overridden by an environment variable named ``GOBALANCER_`` plus the setting's
path in upper case joined by ``_`` (``redis.url`` -> ``GOBALANCER_REDIS_URL``). Values from the
environment are read as YAML scalars, so ``GOBALANCER_PROXY_WORKERS=4`` is the integer 4.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shared.config.durations import dec_hook
from shared.config.errors import ConfigError, describe, resolve_keys
from shared.config.schema import Config, strip_annotated, struct_fields

ENV_PREFIX = "GOBALANCER_"
# The `gobalancer backends|algorithm` CLI's variables. The URL is the CLI's alone (reserved below: the
# settings loader ignores it, and no setting may take its name). The token is the setting
# ``admin.token`` itself: the CLI sends as bearer token the secret the admin service checks.
CLI_URL_ENV = "GOBALANCER_ADMIN_URL"
CLI_TOKEN_ENV = "GOBALANCER_ADMIN_TOKEN"
# Variables of the tooling around the suite (the Compose file, scripts/docker-*, the tests' Redis image): a
# shell that exports them for those must still be able to run every service.
TOOLING_ENV = frozenset(
    {
        "GOBALANCER_ADMIN_PORT",
        "GOBALANCER_APP_BASE_IMAGE",
        "GOBALANCER_BASE_IMAGE",
        "GOBALANCER_CLIENTS_SUBNET",
        "GOBALANCER_E2E_COMPOSE_OVERRIDE",
        "GOBALANCER_E2E_PROXY_PROTOCOL",
        "GOBALANCER_E2E_SCALE_RUNS",
        "GOBALANCER_E2E_UPGRADE_RUNS",
        "GOBALANCER_DOCKER_STATE",
        "GOBALANCER_HTTP_BIND",
        "GOBALANCER_HTTP_PORT",
        "GOBALANCER_INFRA_BASE_IMAGE",
        "GOBALANCER_PROXY_IMAGE",
        "GOBALANCER_PROXY_REPLICAS",
        "GOBALANCER_PURE_PYTHON",
        "GOBALANCER_SKIP_BUILD",
        "GOBALANCER_TEST_APP_IMAGE",
        "GOBALANCER_TEST_DOCKER_IMAGE",
        "GOBALANCER_TEST_REDIS_IMAGE",
    }
)
# Environment variables with the prefix that are not settings: the loader ignores them, and no setting may
# take one of their names (tests/unit/shared/test_cli_environment.py checks both, and that every GOBALANCER_
# name in compose/, k8s/, scripts/, .ci/ and the Makefile, and every one the code reads, is a setting or reserved).
RESERVED_ENV = frozenset(
    {"GOBALANCER_CONFIG", "GOBALANCER_REPLICA_ID", "GOBALANCER_SERVICE", CLI_URL_ENV, *TOOLING_ENV}
)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys instead of silently keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def env_settings(tp: type = Config, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Map every settable environment variable name to the field path it overrides."""
    out: dict[str, tuple[str, ...]] = {}
    for name, hint in (struct_fields(tp) or {}).items():
        path = (*prefix, name)
        out[ENV_PREFIX + "_".join(path).upper()] = path
        nested = struct_fields(hint)
        if nested is not None:
            out.update(env_settings(strip_annotated(hint), path))
    return out


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _is_str_field(path: tuple[str, ...]) -> bool:
    tp: Any = Config
    for part in path:
        fields = struct_fields(tp)
        if fields is None:
            return False
        tp = fields[part]
    return strip_annotated(tp) is str


def _read_file(path: str | os.PathLike[str], source: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"invalid YAML: {where}{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "the top level must be a mapping of settings")
    return data


def _convert(value: Any, tp: Any) -> object:
    return msgspec.convert(value, tp, strict=True, dec_hook=dec_hook)


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = _read_file(path, source) if path is not None else {}

    settings = env_settings()
    from_env: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        if name not in settings:
            raise ConfigError("environment", name, "unknown setting")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        field_path = settings[name]
        # String settings keep the raw text (a token "0123" must not become a number).
        if _is_str_field(field_path):
            value = raw
        _set_path(data, field_path, value)
        from_env[".".join(field_path)] = name

    try:
        return msgspec.convert(data, Config, strict=True, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        field, problem = describe(exc, Config)
        field = resolve_keys(field, data, Config, _convert)
        for setting, env_name in from_env.items():
            if field == setting or field.startswith(setting + ".") or field.startswith(setting + "["):
                raise ConfigError(f"{env_name} (environment)", field, problem) from None
        raise ConfigError(source, field, problem) from None
