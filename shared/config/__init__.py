"""The configuration: one YAML file, decoded once into strict msgspec Structs.

- :mod:`shared.config.schema`: the Structs (one per section) and their checks;
- :mod:`shared.config.durations`: :class:`Seconds`, the one duration type (``PositiveSeconds`` when 0 is refused);
- :mod:`shared.config.loading`: the file, the ``GOBALANCER_*`` environment overrides, :func:`load_config`;
- :mod:`shared.config.errors`: :class:`ConfigError` and the translation of msgspec's messages (shared with the
  admin API);
- :mod:`shared.config.redaction`: the effective settings as plain data, secrets hidden;
- :mod:`shared.config.routing`: the rules of pools and routes (names, host patterns, prefixes, precedence,
  the route table's checks), shared by the schema, the proxy's matcher and the admin API.

Errors are raised as :class:`ConfigError`, whose message is one line: ``SOURCE: PATH: PROBLEM``.
Everything is importable from ``shared.config`` itself.
"""

from __future__ import annotations

from shared.config.durations import PositiveSeconds, Seconds
from shared.config.errors import ConfigError
from shared.config.loading import (
    CLI_TOKEN_ENV,
    CLI_URL_ENV,
    ENV_PREFIX,
    RESERVED_ENV,
    TOOLING_ENV,
    env_settings,
    load_config,
)
from shared.config.redaction import effective_settings, redact_url, to_builtins
from shared.config.routing import DEFAULT_POOL, RouteTableError
from shared.config.schema import (
    ALGORITHMS,
    AdminConfig,
    Algorithm,
    BackendConfig,
    BackendDenyConfig,
    BalancingConfig,
    Config,
    DiscoveryConfig,
    DockerDiscoveryConfig,
    Fraction,
    HealthCheckConfig,
    KubernetesDiscoveryConfig,
    KubernetesServiceConfig,
    ListenerConfig,
    LoggingConfig,
    MetricsConfig,
    NonNegativeInt,
    OutlierConfig,
    PoolConfig,
    PositiveInt,
    ProbeConfig,
    ProxyConfig,
    RedisConfig,
    RouteConfig,
    TimeoutConfig,
    TLSConfig,
    TracingConfig,
    Weight,
    parse_status_ranges,
)

__all__ = [
    "ALGORITHMS",
    "CLI_TOKEN_ENV",
    "CLI_URL_ENV",
    "DEFAULT_POOL",
    "ENV_PREFIX",
    "RESERVED_ENV",
    "TOOLING_ENV",
    "AdminConfig",
    "Algorithm",
    "BackendConfig",
    "BackendDenyConfig",
    "BalancingConfig",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "DockerDiscoveryConfig",
    "Fraction",
    "HealthCheckConfig",
    "KubernetesDiscoveryConfig",
    "KubernetesServiceConfig",
    "ListenerConfig",
    "LoggingConfig",
    "MetricsConfig",
    "NonNegativeInt",
    "OutlierConfig",
    "PoolConfig",
    "PositiveInt",
    "PositiveSeconds",
    "ProbeConfig",
    "ProxyConfig",
    "RedisConfig",
    "RouteConfig",
    "RouteTableError",
    "Seconds",
    "TLSConfig",
    "TimeoutConfig",
    "TracingConfig",
    "Weight",
    "effective_settings",
    "env_settings",
    "load_config",
    "parse_status_ranges",
    "redact_url",
    "to_builtins",
]
