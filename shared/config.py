"""The configuration: one YAML file, decoded once into strict msgspec Structs.

Every setting can be overridden by an environment variable named ``GOBALANCER_`` plus the setting's
path in upper case joined by ``_`` (``redis.url`` -> ``GOBALANCER_REDIS_URL``). Values from the
environment are read as YAML scalars, so ``GOBALANCER_PROXY_WORKERS=4`` is the integer 4.

Errors are raised as :class:`ConfigError`, whose message is one line: ``SOURCE: PATH: PROBLEM``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import msgspec
import yaml

from shared.addresses import normalize_address, parse_address

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
        "GOBALANCER_DOCKER_STATE",
        "GOBALANCER_HTTP_BIND",
        "GOBALANCER_HTTP_PORT",
        "GOBALANCER_INFRA_BASE_IMAGE",
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

Algorithm = Literal[
    "round_robin",
    "weighted",
    "least_connections",
    "weighted_least_connections",
    "p2c",
    "ip_hash",
    "ewma",
]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)

Weight = Annotated[int, msgspec.Meta(ge=1, le=10000)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class ConfigError(Exception):
    """A configuration problem; ``str()`` is a single line naming source, field path and problem."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        source, path, problem = (_one_line(x) for x in (source, path, problem))
        self.source, self.path, self.problem = source, path, problem
        super().__init__(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")


def _one_line(text: str) -> str:
    """Control characters escaped (a YAML key may hold a newline): an error stays one log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Seconds(float):
    """A duration in seconds: a number (``2``, ``0.5``) or a string with a unit (``500ms``, ``2s``, ``1m``)."""

    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    _RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")

    @classmethod
    def parse(cls, value: object) -> Seconds:
        if isinstance(value, bool):
            raise ValueError("expected a duration (seconds, or a string like '500ms', '2s')")
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and (m := cls._RE.match(value)):
            number = float(m.group(1)) * cls._UNITS[m.group(2) or "s"]
        else:
            raise ValueError(f"expected a duration (seconds, or a string like '500ms', '2s'), got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"a duration must be a finite number of seconds (got {value!r})")
        if number < 0:
            raise ValueError(f"a duration cannot be negative (got {value!r})")
        return cls(number)


def _check_address(value: str, field: str, *, listener: bool = False) -> str:
    try:
        hp = parse_address(value, allow_empty_host=listener)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    return str(hp) if hp.host else f":{hp.port}"


class _Struct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BackendConfig(_Struct):
    address: str
    weight: Weight = 1

    def __post_init__(self) -> None:
        _check_address(self.address, "address")
        self.address = normalize_address(self.address)


class HealthCheckConfig(_Struct):
    type: Literal["tcp", "http", "https"] = "tcp"
    interval_sec: Seconds = Seconds(2.0)
    timeout_sec: Seconds = Seconds(1.0)
    # The original GoBalancer's name for the fall threshold; when set it wins over ``fall``.
    retries: PositiveInt | None = None
    rise: PositiveInt = 2
    fall: PositiveInt = 3
    path: str = "/"
    method: str = "GET"
    host: str = ""
    expect_status: str = "200-399"
    expect_body: str = ""
    jitter: Fraction = 0.1
    start_healthy: bool = False
    concurrency: PositiveInt = 256
    tls_verify: bool = False
    # Several health replicas may run; the one holding the "health" lease probes, a standby takes over
    # within one lease TTL of the leader's death.
    lease_ttl_sec: Seconds = Seconds(5.0)

    def __post_init__(self) -> None:
        if self.retries is not None:
            self.fall = self.retries
        if self.interval_sec <= 0:
            raise ValueError("interval_sec: must be > 0")
        if self.timeout_sec <= 0:
            raise ValueError("timeout_sec: must be > 0")
        if self.lease_ttl_sec <= 0:
            raise ValueError("lease_ttl_sec: must be > 0")
        if not self.path.startswith("/"):
            raise ValueError(f"path: must start with '/', got {self.path!r}")
        if not re.fullmatch(r"[A-Z]+", self.method):
            raise ValueError(f"method: must be an upper-case HTTP method, got {self.method!r}")
        try:
            parse_status_ranges(self.expect_status)
        except ValueError as exc:
            raise ValueError(f"expect_status: {exc}") from None


def parse_status_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    """``"200-399,404"`` -> ((200, 399), (404, 404)); raises ValueError when malformed."""
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*([1-5][0-9][0-9])\s*(?:-\s*([1-5][0-9][0-9])\s*)?", part)
        if not m:
            raise ValueError(f"must be like '200-399' or '200,204', got {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if hi < lo:
            raise ValueError(f"range {part.strip()!r} is reversed")
        ranges.append((lo, hi))
    return tuple(ranges)


class TimeoutConfig(_Struct):
    client_idle_sec: Seconds = Seconds(60.0)
    backend_idle_sec: Seconds = Seconds(60.0)
    connect_timeout: Seconds = Seconds(5.0)
    # Time allowed to receive a whole request head (slowloris defence) -> 408.
    header_read_sec: Seconds = Seconds(10.0)
    # Time to wait for the backend's response head -> 504.
    response_sec: Seconds = Seconds(60.0)
    # On SIGTERM, how long in-flight requests may take before the process exits anyway.
    drain_sec: Seconds = Seconds(30.0)

    def __post_init__(self) -> None:
        for name in ("client_idle_sec", "backend_idle_sec", "connect_timeout", "header_read_sec", "response_sec"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0")


class DockerDiscoveryConfig(_Struct):
    url: str = ""  # empty: DOCKER_HOST or the local socket
    network: str = ""  # preferred network when a container is on several
    resync_sec: Seconds = Seconds(30.0)


class KubernetesDiscoveryConfig(_Struct):
    namespace: str = "default"
    service: str = ""
    port_name: str = ""  # empty: the first port of the slice
    kubeconfig: str = ""  # empty: in-cluster config, else the default kubeconfig
    watch_timeout_sec: Seconds = Seconds(300.0)
    # A plain-HTTP API server URL (`kubectl proxy`, tests); when set it wins over in-cluster/kubeconfig.
    api_url: str = ""


class DiscoveryConfig(_Struct):
    type: Literal["static", "docker", "kubernetes"] = "static"
    docker: DockerDiscoveryConfig = msgspec.field(default_factory=DockerDiscoveryConfig)
    kubernetes: KubernetesDiscoveryConfig = msgspec.field(default_factory=KubernetesDiscoveryConfig)
    lease_ttl_sec: Seconds = Seconds(10.0)
    watch_file: bool = True
    file_poll_sec: Seconds = Seconds(1.0)  # static: how often the config file's mtime/hash is checked

    def __post_init__(self) -> None:
        for name in ("lease_ttl_sec", "file_poll_sec"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0")
        if self.docker.resync_sec <= 0:
            raise ValueError("docker: resync_sec must be > 0")
        if self.kubernetes.watch_timeout_sec <= 0:
            raise ValueError("kubernetes: watch_timeout_sec must be > 0")


class RedisConfig(_Struct):
    # Empty: `gobalancer up` starts a private redis-server. Accepted: redis://, rediss://, unix://,
    # redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db]
    url: str = ""
    namespace: str = "gobalancer"
    # Replicas renew their heartbeat every heartbeat_sec; their counters expire after replica_ttl_sec.
    heartbeat_sec: Seconds = Seconds(1.0)
    replica_ttl_sec: Seconds = Seconds(5.0)
    # A proxy pushes its in-flight count changes (one batched HINCRBY round trip) and reads the other
    # replicas' counts every counts_sync_sec: shorter keeps least_connections across replicas more
    # current, longer costs Redis and the proxy less (each is one round trip per replica per period).
    counts_sync_sec: Seconds = Seconds(0.1)

    def __post_init__(self) -> None:
        if self.url and not re.match(r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://", self.url):
            raise ValueError("url: must start with redis://, rediss://, unix:// or redis+sentinel://")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.namespace):
            raise ValueError("namespace: may hold only letters, digits, '_', '.' and '-'")
        if self.heartbeat_sec <= 0:
            raise ValueError("heartbeat_sec: must be > 0")
        if self.replica_ttl_sec <= self.heartbeat_sec:
            raise ValueError("replica_ttl_sec: must be greater than heartbeat_sec")
        if not 0 < self.counts_sync_sec <= self.heartbeat_sec:
            raise ValueError("counts_sync_sec: must be > 0 and at most heartbeat_sec")


class AdminConfig(_Struct):
    listen_address: str = "127.0.0.1:8081"
    token: str = ""
    protect_reads: bool = False
    allow_insecure: bool = False
    # Base URL of a swagger-ui-dist copy; when set, Swagger UI is served at /schema/swagger (no CDN).
    swagger_ui_url: str = ""
    # Host names the admin answers to besides its listen address and localhost (a request with another
    # Host header, or a browser's Origin of another site, is refused with 403: DNS rebinding, CSRF).
    # Names or name:port, e.g. ["admin.example.com"]; "*" turns the Host check off.
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    # Open GET /events streams at most (503 beyond; also kept 128 below the process's open-files limit).
    # A stream costs a queue and its connection in the admin, no Redis connection.
    max_event_streams: Annotated[int, msgspec.Meta(ge=0, le=100000)] = 512

    def __post_init__(self) -> None:
        self.listen_address = _check_address(self.listen_address, "listen_address", listener=True)
        for i, host in enumerate(self.allowed_hosts):
            if host != "*" and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", host):
                raise ValueError(f"allowed_hosts[{i}]: {host!r} is not a host name, host:port or [IPv6]")


class TLSConfig(_Struct):
    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("key_file: cert_file and key_file must be given together")


class ProxyConfig(_Struct):
    workers: PositiveInt = 1
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32768  # whole request head -> 431 beyond
    max_target_bytes: Annotated[int, msgspec.Meta(ge=64)] = 8192  # request target -> 414 beyond
    max_body_bytes: NonNegativeInt = 0  # 0: unlimited; -> 413 beyond
    pool_size: NonNegativeInt = 64  # idle upstream connections kept per backend
    retries: NonNegativeInt = 2  # extra attempts on another backend
    retry_budget: Fraction = 0.2  # retries allowed as a share of requests
    high_water_bytes: PositiveInt = 256 * 1024
    proxy_protocol: Literal["", "v1", "v2"] = ""  # tcp mode: header sent to the backend
    # Request header names with "_" are dropped (CGI/WSGI/PHP backends read X_Forwarded_For as
    # X-Forwarded-For; nginx drops them by default too). True: forward them.
    keep_underscore_headers: bool = False
    tls: TLSConfig = msgspec.field(default_factory=TLSConfig)
    # Client addresses behind a balancer. Peers in these networks (CIDRs or addresses) must start every
    # connection with a PROXY protocol header (v1 or v2), whose source address becomes the client's;
    # empty: no PROXY header is accepted from anyone.
    proxy_protocol_from: list[str] = msgspec.field(default_factory=list)
    # Peers whose X-Forwarded-For is believed (uvicorn's forwarded_allow_ips); empty: nobody's.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # On SIGTERM: report not-ready (GET /ready -> 503) at once and keep serving this long, so the balancers
    # in front stop sending new connections, then stop accepting and drain (timeout.drain_sec).
    shutdown_delay_sec: Seconds = Seconds(0.0)

    def __post_init__(self) -> None:
        if self.proxy_protocol_from and self.tls.enabled:
            raise ValueError(
                "proxy_protocol_from: not supported with tls on the same listener (the PROXY header comes first)"
            )
        for name in ("proxy_protocol_from", "trusted_proxies"):
            for i, cidr in enumerate(getattr(self, name)):
                try:
                    ipaddress.ip_network(cidr.strip(), strict=False)
                except ValueError:
                    raise ValueError(
                        f"{name}[{i}]: {cidr!r} is not a network (a CIDR such as 10.0.0.0/8) or an address"
                    ) from None


class OutlierConfig(_Struct):
    consecutive_failures: PositiveInt = 5
    base_ejection_sec: Seconds = Seconds(10.0)
    max_ejection_sec: Seconds = Seconds(300.0)
    max_ejection_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50

    def __post_init__(self) -> None:
        if self.base_ejection_sec <= 0:
            raise ValueError("base_ejection_sec: must be > 0")
        if self.max_ejection_sec < self.base_ejection_sec:
            raise ValueError("max_ejection_sec: must be at least base_ejection_sec")


class BalancingConfig(_Struct):
    # ip_hash key: "client_ip", "header:NAME" or "cookie:NAME"
    hash_key: str = "client_ip"
    hash_epsilon: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] = 0.25
    slow_start_sec: Seconds = Seconds(0.0)
    ewma_decay_sec: Seconds = Seconds(10.0)
    outlier: OutlierConfig = msgspec.field(default_factory=OutlierConfig)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"client_ip|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^\s;=]+", self.hash_key):
            raise ValueError(f"hash_key: must be 'client_ip', 'header:NAME' or 'cookie:NAME', got {self.hash_key!r}")


class MetricsConfig(_Struct):
    # Count on the proxy's hot path (requests, latency, bytes...). Off: nothing is counted there, and
    # a proxy reports no request totals to the store either (the dashboard's per-backend requests).
    enabled: bool = True
    # Where the services without an HTTP API serve GET /metrics ("" = not served). A proxy with
    # proxy.workers = N serves worker i on port + i. The admin API serves /metrics on its own listener.
    proxy_listen_address: str = "127.0.0.1:9100"
    health_listen_address: str = "127.0.0.1:9201"
    discovery_listen_address: str = "127.0.0.1:9202"

    def __post_init__(self) -> None:
        for name in ("proxy_listen_address", "health_listen_address", "discovery_listen_address"):
            value = getattr(self, name)
            if value:
                setattr(self, name, _check_address(value, name, listener=True))


class BackendDenyConfig(_Struct):
    """Addresses no backend may have (checked on every write that adds one: admin API and discovery)."""

    # The suite's own listeners: admin.listen_address, listen_address, the metrics listeners and Redis
    # (or its sentinels). A backend at one of them lets a client of the proxy reach it (issue 15).
    own_listeners: bool = True
    # More networks (CIDR) no backend may be in, e.g. ["169.254.169.254/32"] (a cloud metadata service).
    networks: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        import ipaddress

        for i, network in enumerate(self.networks):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"networks[{i}]: {network!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from None


class TracingConfig(_Struct):
    # W3C traceparent to backends: an incoming valid one continues (the proxy's span becomes the parent),
    # an absent or invalid one is replaced by a new trace.
    propagate: bool = True
    # OTLP/HTTP collector (needs the otel extra): a base URL (http://127.0.0.1:4318 -> /v1/traces appended) or
    # the full traces URL (.../v1/traces, used as is). "" = OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
    # OTEL_EXPORTER_OTLP_ENDPOINT (a base URL), else no export.
    otlp_endpoint: str = ""
    service_name: str = "gobalancer-proxy"
    sample_ratio: Fraction = 1.0  # share of new traces marked sampled (incoming sampled flags are kept)


class LoggingConfig(_Struct):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = False
    access_log_sample: Fraction = 1.0
    access_log_file: str = ""  # "" = stderr; else appended to this file


class Config(_Struct):
    listen_address: str = ":8080"
    mode: Literal["http", "tcp"] = "http"
    algorithm: Algorithm = "round_robin"
    backends: list[BackendConfig] = msgspec.field(default_factory=list)
    health_check: HealthCheckConfig = msgspec.field(default_factory=HealthCheckConfig)
    timeout: TimeoutConfig = msgspec.field(default_factory=TimeoutConfig)
    discovery: DiscoveryConfig = msgspec.field(default_factory=DiscoveryConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    proxy: ProxyConfig = msgspec.field(default_factory=ProxyConfig)
    balancing: BalancingConfig = msgspec.field(default_factory=BalancingConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    backend_deny: BackendDenyConfig = msgspec.field(default_factory=BackendDenyConfig)
    # `gobalancer up` starts a small demo HTTP server on each loopback static backend.
    demo: bool = False

    def __post_init__(self) -> None:
        self.listen_address = _check_address(self.listen_address, "listen_address", listener=True)
        seen: set[str] = set()
        for i, backend in enumerate(self.backends):
            if backend.address in seen:
                raise ValueError(f"backends[{i}]: duplicate address {backend.address}")
            seen.add(backend.address)


# ---------------------------------------------------------------------------------------------
# Loading


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


def _dec_hook(tp: type, obj: object) -> object:
    if tp is Seconds:
        return Seconds.parse(obj)
    raise NotImplementedError(f"cannot decode {tp!r}")


def _strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _struct_fields(tp: Any) -> dict[str, Any] | None:
    tp = _strip_annotated(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        hints = get_type_hints(tp, include_extras=True)
        return {name: hints[name] for name in tp.__struct_fields__}
    return None


def env_settings(tp: type = Config, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Map every settable environment variable name to the field path it overrides."""
    out: dict[str, tuple[str, ...]] = {}
    for name, hint in (_struct_fields(tp) or {}).items():
        path = (*prefix, name)
        out[ENV_PREFIX + "_".join(path).upper()] = path
        nested = _struct_fields(hint)
        if nested is not None:
            out.update(env_settings(_strip_annotated(hint), path))
    return out


_MSGSPEC_PATH = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")


def _type_at(path: str) -> Any:
    """The declared type at a msgspec error path such as ``.backends[0].weight`` (None if unknown)."""
    tp: Any = Config
    for part in re.findall(r"\.([A-Za-z_0-9]+)|\[\d+\]", path):
        tp = _strip_annotated(tp)
        if part == "":  # a list index
            args = get_args(tp)
            tp = args[0] if args else None
            continue
        fields = _struct_fields(tp)
        if fields is None or part not in fields:
            return None
        tp = fields[part]
    return _strip_annotated(tp)


def _allowed_fields(path: str) -> list[str]:
    tp = _type_at(path)
    if get_origin(tp) is list:
        tp = get_args(tp)[0]
    return list(_struct_fields(tp) or {})


def _describe(err: msgspec.ValidationError) -> tuple[str, str]:
    m = _MSGSPEC_PATH.match(str(err))
    assert m is not None
    problem, raw_path = m.group("problem"), m.group("path") or ""
    unknown = _UNKNOWN_FIELD.match(problem)
    if unknown:
        allowed = _allowed_fields(raw_path)
        raw_path = f"{raw_path}.{unknown.group('field')}"
        problem = "unknown field" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif problem.startswith("Invalid enum value"):
        choices = [str(a) for a in get_args(_type_at(raw_path))]
        problem = problem.replace("Invalid enum value", "invalid value")
        if choices:
            problem += f" (expected one of: {', '.join(choices)})"
    else:
        problem = problem.replace("Expected", "expected")
        # __post_init__ checks name their field as "field: problem".
        named = re.match(r"^([a-z_]+): (.*)$", problem, re.S)
        if named and named.group(1) in _allowed_fields(raw_path):
            raw_path, problem = f"{raw_path}.{named.group(1)}", named.group(2)
    return raw_path.lstrip("."), problem


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else "<defaults>"
    data: Any = {}
    if path is not None:
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
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, "", "the top level must be a mapping of settings")

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
        return msgspec.convert(data, Config, strict=True, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        field, problem = _describe(exc)
        for setting, env_name in from_env.items():
            if field == setting or field.startswith(setting + ".") or field.startswith(setting + "["):
                raise ConfigError(f"{env_name} (environment)", field, problem) from None
        raise ConfigError(source, field, problem) from None


def _is_str_field(path: tuple[str, ...]) -> bool:
    tp: Any = Config
    for part in path:
        fields = _struct_fields(tp)
        if fields is None:
            return False
        tp = fields[part]
    tp = _strip_annotated(tp)
    return tp is str


# ---------------------------------------------------------------------------------------------
# Presenting


def to_builtins(obj: object) -> Any:
    """Plain data (dicts, lists, numbers, strings) for any config object."""
    return msgspec.to_builtins(obj, enc_hook=lambda value: float(value) if isinstance(value, float) else value)


_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|sentinel_password|ssl_password)=)[^&#]*")


def redact_url(url: str) -> str:
    """Hide the passwords in a Redis URL: in the userinfo (split at the *last* '@', as redis-py does)
    and in query parameters (``password``, ``sentinel_password``, ``ssl_password``)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority_end = len(rest)
        for stop in "/?#":
            i = rest.find(stop)
            if i >= 0:
                authority_end = min(authority_end, i)
        authority, tail = rest[:authority_end], rest[authority_end:]
        userinfo, at, hosts = authority.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            authority = f"{user}:***@{hosts}"
        url = f"{scheme}://{authority}{tail}"
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}***", url)


def effective_settings(config: Config) -> dict[str, Any]:
    """The settings as plain data with secrets redacted (for `check-config` and logs)."""
    data: dict[str, Any] = to_builtins(config)
    if data["admin"]["token"]:
        data["admin"]["token"] = "***"
    data["redis"]["url"] = redact_url(data["redis"]["url"])
    return data
