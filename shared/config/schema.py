"""The configuration's schema: strict msgspec Structs, one per section, with their own checks.

Each Struct refuses unknown fields. Its rules beyond types and bounds live in its :meth:`_Struct.check`,
which raises ``ValueError("FIELD: PROBLEM")`` (the loader moves the problem onto that field); a duration
declared :data:`~shared.config.durations.PositiveSeconds` is refused when 0 for every Struct at once.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import msgspec

from shared.addresses import normalize_address, parse_address
from shared.config.durations import PositiveSeconds, Seconds, positive_fields
from shared.config.limits import (
    MaxConnections,
    MaxPending,
    QueueTimeout,
    RateLimitsConfig,
    check_connection_limits,
    check_rule_targets,
)
from shared.config.routing import (
    DEFAULT_POOL,
    RouteTableError,
    check_name,
    check_route_table,
    normalize_headers,
    normalize_host_pattern,
    normalize_methods,
    normalize_path_prefix,
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


def check_address(value: str, field: str, *, listener: bool = False) -> str:
    try:
        hp = parse_address(value, allow_empty_host=listener)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    return str(hp) if hp.host else f":{hp.port}"


class _Struct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A section: unknown fields refused; its positive durations, then its own :meth:`check`, checked on
    every construction (decoding or a call)."""

    def __post_init__(self) -> None:
        for name in positive_fields(type(self)):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0")
        self.check()

    def check(self) -> None:
        """The section's own rules; raise ``ValueError("FIELD: PROBLEM")``."""


class BackendConfig(_Struct):
    address: str
    weight: Weight = 1
    # Requests in flight to this backend across all replicas at most (0: no limit of its own).
    max_connections: MaxConnections = 0

    def check(self) -> None:
        check_address(self.address, "address")
        self.address = normalize_address(self.address)


class ProbeConfig(_Struct):
    """How one pool's backends are probed (a pool's ``health_check``; the top-level one adds the service's
    own settings, :class:`HealthCheckConfig`)."""

    type: Literal["tcp", "http", "https"] = "tcp"
    interval_sec: PositiveSeconds = Seconds(2.0)
    timeout_sec: PositiveSeconds = Seconds(1.0)
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
    tls_verify: bool = False

    def check(self) -> None:
        if self.retries is not None:
            self.fall = self.retries
        if not self.path.startswith("/"):
            raise ValueError(f"path: must start with '/', got {self.path!r}")
        if not re.fullmatch(r"[A-Z]+", self.method):
            raise ValueError(f"method: must be an upper-case HTTP method, got {self.method!r}")
        try:
            parse_status_ranges(self.expect_status)
        except ValueError as exc:
            raise ValueError(f"expect_status: {exc}") from None


class HealthCheckConfig(ProbeConfig):
    """The default pool's probes, and the health service's own settings."""

    concurrency: PositiveInt = 256
    # Several health replicas may run; the one holding the "health" lease probes, a standby takes over
    # within one lease TTL of the leader's death.
    lease_ttl_sec: PositiveSeconds = Seconds(5.0)


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
    client_idle_sec: PositiveSeconds = Seconds(60.0)
    backend_idle_sec: PositiveSeconds = Seconds(60.0)
    connect_timeout: PositiveSeconds = Seconds(5.0)
    # Time allowed to receive a whole request head (slowloris defence) -> 408.
    header_read_sec: PositiveSeconds = Seconds(10.0)
    # Time to wait for the backend's response head -> 504.
    response_sec: PositiveSeconds = Seconds(60.0)
    # On SIGTERM, how long in-flight requests may take before the process exits anyway.
    drain_sec: Seconds = Seconds(30.0)


class DockerDiscoveryConfig(_Struct):
    url: str = ""  # empty: DOCKER_HOST or the local socket
    network: str = ""  # preferred network when a container is on several
    resync_sec: PositiveSeconds = Seconds(30.0)


class KubernetesServiceConfig(_Struct):
    """One Service followed into one pool (``discovery.kubernetes.services[i]``)."""

    service: str
    pool: str = DEFAULT_POOL  # created in the store if absent
    namespace: str = "default"
    port: str = ""  # the slice port's name ("" = the slice's first port)

    def check(self) -> None:
        if not _K8S_NAME.fullmatch(self.service):
            raise ValueError(f"service: {self.service!r} is not a Kubernetes Service name (RFC 1035 label)")
        if not _K8S_NAME.fullmatch(self.namespace):
            raise ValueError(f"namespace: {self.namespace!r} is not a Kubernetes namespace name (RFC 1123 label)")
        try:
            check_name("pool", self.pool)
        except ValueError as exc:
            raise ValueError(f"pool: {exc}") from None


_K8S_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class KubernetesDiscoveryConfig(_Struct):
    namespace: str = "default"
    service: str = ""
    port_name: str = ""  # empty: the first port of the slice
    kubeconfig: str = ""  # empty: in-cluster config, else the default kubeconfig
    watch_timeout_sec: PositiveSeconds = Seconds(300.0)
    # A plain-HTTP API server URL (`kubectl proxy`, tests); when set it wins over in-cluster/kubeconfig.
    api_url: str = ""
    # More Services, each into its pool (``service`` above, if set, is the default pool's).
    services: list[KubernetesServiceConfig] = msgspec.field(default_factory=list)

    def check(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        if self.service:
            seen[(self.namespace, self.service)] = -1
        for i, entry in enumerate(self.services):
            key = (entry.namespace, entry.service)
            if key in seen:
                other = "discovery.kubernetes.service" if seen[key] < 0 else f"services[{seen[key]}]"
                raise ValueError(f"services[{i}].service: {entry.namespace}/{entry.service} is also {other}")
            seen[key] = i


class DiscoveryConfig(_Struct):
    type: Literal["static", "docker", "kubernetes"] = "static"
    docker: DockerDiscoveryConfig = msgspec.field(default_factory=DockerDiscoveryConfig)
    kubernetes: KubernetesDiscoveryConfig = msgspec.field(default_factory=KubernetesDiscoveryConfig)
    lease_ttl_sec: PositiveSeconds = Seconds(10.0)
    watch_file: bool = True
    file_poll_sec: PositiveSeconds = Seconds(1.0)  # static: how often the config file's mtime/hash is checked


class RedisConfig(_Struct):
    # Empty: `gobalancer up` starts a private redis-server. Accepted: redis://, rediss://, unix://,
    # redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db]
    url: str = ""
    namespace: str = "gobalancer"
    # Replicas renew their heartbeat every heartbeat_sec; their counters expire after replica_ttl_sec.
    heartbeat_sec: PositiveSeconds = Seconds(1.0)
    replica_ttl_sec: Seconds = Seconds(5.0)
    # A proxy pushes its in-flight count changes (one batched HINCRBY round trip) and reads the other
    # replicas' counts every counts_sync_sec: shorter keeps least_connections across replicas more
    # current, longer costs Redis and the proxy less (each is one round trip per replica per period).
    counts_sync_sec: Seconds = Seconds(0.1)

    def check(self) -> None:
        if self.url and not re.match(r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://", self.url):
            raise ValueError("url: must start with redis://, rediss://, unix:// or redis+sentinel://")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.namespace):
            raise ValueError("namespace: may hold only letters, digits, '_', '.' and '-'")
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

    def check(self) -> None:
        self.listen_address = check_address(self.listen_address, "listen_address", listener=True)
        for i, host in enumerate(self.allowed_hosts):
            if host != "*" and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", host):
                raise ValueError(f"allowed_hosts[{i}]: {host!r} is not a host name, host:port or [IPv6]")


class TLSConfig(_Struct):
    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def check(self) -> None:
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
    # With workers > 1: process i (the first is 0) runs on the i-th CPU this proxy may use (modulo their
    # number), as nginx's ``worker_cpu_affinity auto``: left to the scheduler, two busy workers sharing a
    # core for a while stretched two workers' p99 from 1.5 to 4.4 ms (bench/README.md).
    cpu_affinity: bool = True

    def check(self) -> None:
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
    base_ejection_sec: PositiveSeconds = Seconds(10.0)
    max_ejection_sec: Seconds = Seconds(300.0)
    max_ejection_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50

    def check(self) -> None:
        if self.max_ejection_sec < self.base_ejection_sec:
            raise ValueError("max_ejection_sec: must be at least base_ejection_sec")


class BalancingConfig(_Struct):
    # ip_hash key: "client_ip", "header:NAME" or "cookie:NAME"
    hash_key: str = "client_ip"
    hash_epsilon: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] = 0.25
    slow_start_sec: Seconds = Seconds(0.0)
    ewma_decay_sec: Seconds = Seconds(10.0)
    outlier: OutlierConfig = msgspec.field(default_factory=OutlierConfig)

    def check(self) -> None:
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

    def check(self) -> None:
        for name in ("proxy_listen_address", "health_listen_address", "discovery_listen_address"):
            value = getattr(self, name)
            if value:
                setattr(self, name, check_address(value, name, listener=True))


class BackendDenyConfig(_Struct):
    """Addresses no backend may have (checked on every write that adds one: admin API and discovery)."""

    # The suite's own listeners: admin.listen_address, listen_address, the metrics listeners and Redis
    # (or its sentinels). A backend at one of them lets a client of the proxy reach it (issue 15).
    own_listeners: bool = True
    # More networks (CIDR) no backend may be in, e.g. ["169.254.169.254/32"] (a cloud metadata service).
    networks: list[str] = msgspec.field(default_factory=list)

    def check(self) -> None:
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


class PoolConfig(_Struct):
    """A named set of backends with its own algorithm, balancing and probes (``pools: {NAME: ...}``)."""

    backends: list[BackendConfig] = msgspec.field(default_factory=list)
    algorithm: Algorithm = "round_robin"
    balancing: BalancingConfig = msgspec.field(default_factory=BalancingConfig)
    health_check: ProbeConfig = msgspec.field(default_factory=ProbeConfig)
    # Connection limits (circuit breaking): requests in flight to the pool across all replicas at most (0: no
    # limit); requests waiting for a slot at most, per replica (beyond: 503 at once); how long one waits.
    max_connections: MaxConnections = 0
    max_pending: MaxPending = 0
    queue_timeout_sec: QueueTimeout = 1.0

    def check(self) -> None:
        _check_unique_backends(self.backends)
        check_connection_limits(self.max_connections, self.max_pending, self.queue_timeout_sec)


class RouteConfig(_Struct):
    """A rule of the route table: requests matching host, path prefix, methods and headers go to ``pool``.
    Normalized when checked: host in lower case, no trailing '/' on the prefix, header names in lower case."""

    name: str
    pool: str
    host: str = ""  # "" = any host; "a.example.com", or "*.example.com" (any subdomain, not example.com)
    path_prefix: str = "/"
    methods: list[str] = msgspec.field(default_factory=list)  # [] = any method
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # name -> exact value, all must match
    strip_prefix: bool = False
    rewrite_host: str = ""  # "" = the client's Host header is forwarded

    def check(self) -> None:
        try:
            check_name("route", self.name)
        except ValueError as exc:
            raise ValueError(f"name: {exc}") from None
        for name, normalize in _ROUTE_FIELDS:
            try:
                setattr(self, name, normalize(getattr(self, name)))
            except ValueError as exc:
                raise ValueError(f"{name}: route {self.name!r}: {exc}") from None
        if self.rewrite_host and not _HOST_PORT.fullmatch(self.rewrite_host):
            raise ValueError(f"rewrite_host: route {self.name!r}: {self.rewrite_host!r} is not a host or host:port")


_ROUTE_FIELDS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("host", normalize_host_pattern),
    ("path_prefix", normalize_path_prefix),
    ("methods", normalize_methods),
    ("headers", normalize_headers),
)
_HOST_PORT = re.compile(r"[A-Za-z0-9_.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class ListenerConfig(_Struct):
    """A listener besides ``listen_address``: TCP to one pool, or HTTP through the routes (or to one pool)."""

    listen_address: str
    mode: Literal["http", "tcp"] = "http"
    pool: str = ""  # tcp: required; http: "" = the route table, else every request to this pool

    def check(self) -> None:
        self.listen_address = check_address(self.listen_address, "listen_address", listener=True)
        if self.mode == "tcp" and not self.pool:
            raise ValueError("pool: a tcp listener sends every connection to one pool; name it")


def _check_unique_backends(backends: list[BackendConfig]) -> None:
    seen: set[str] = set()
    for i, backend in enumerate(backends):
        if backend.address in seen:
            raise ValueError(f"backends[{i}]: duplicate address {backend.address}")
        seen.add(backend.address)


def _same_socket(a: str, b: str) -> bool:
    """Whether two listen addresses would bind the same port (an empty or any-address host takes them all)."""
    host_a, _, port_a = a.rpartition(":")
    host_b, _, port_b = b.rpartition(":")
    return port_a == port_b and (host_a == host_b or bool({host_a, host_b} & {"", "0.0.0.0", "[::]"}))


class Config(_Struct):
    listen_address: str = ":8080"
    mode: Literal["http", "tcp"] = "http"
    algorithm: Algorithm = "round_robin"
    backends: list[BackendConfig] = msgspec.field(default_factory=list)
    health_check: HealthCheckConfig = msgspec.field(default_factory=HealthCheckConfig)
    # Routing: the pool "default" is the top-level backends, algorithm, balancing and health_check.
    pools: dict[str, PoolConfig] = msgspec.field(default_factory=dict)
    routes: list[RouteConfig] = msgspec.field(default_factory=list)
    # The pool of a request no route matches: "" = 404 (with no routes at all, every request goes to "default").
    default_pool: str = ""
    listeners: list[ListenerConfig] = msgspec.field(default_factory=list)
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
    rate_limits: RateLimitsConfig = msgspec.field(default_factory=RateLimitsConfig)
    # The default pool's connection limits (as a named pool's: pools.NAME.max_connections, ...).
    max_connections: MaxConnections = 0
    max_pending: MaxPending = 0
    queue_timeout_sec: QueueTimeout = 1.0
    # `gobalancer up` starts a small demo HTTP server on each loopback static backend.
    demo: bool = False

    def check(self) -> None:
        self.listen_address = check_address(self.listen_address, "listen_address", listener=True)
        _check_unique_backends(self.backends)
        check_connection_limits(self.max_connections, self.max_pending, self.queue_timeout_sec)
        for name in self.pools:
            if name == DEFAULT_POOL:
                raise ValueError(
                    "pools.default: the pool named default is the top-level backends, algorithm, balancing and "
                    "health_check; give this pool another name"
                )
            try:
                check_name("pool", name)
            except ValueError as exc:
                raise ValueError(f"pools: {exc}") from None
        pools = self.pool_names()
        known = ", ".join(sorted(pools))
        bound = {"listen_address": self.listen_address}
        for i, listener in enumerate(self.listeners):
            at = f"listeners[{i}]"
            for where, address in bound.items():
                if _same_socket(listener.listen_address, address):
                    raise ValueError(f"{at}.listen_address: {listener.listen_address} is also {where}'s")
            bound[at] = listener.listen_address
            if listener.pool and listener.pool not in pools:
                raise ValueError(f"{at}.pool: pool {listener.pool!r} does not exist (pools: {known})")
        if self.routes and self.mode == "tcp" and not any(x.mode == "http" and not x.pool for x in self.listeners):
            raise ValueError("routes: no listener uses them (mode is tcp, and no http listener without a pool)")
        try:
            check_route_table(self.routes, pools, self.default_pool)
        except RouteTableError as exc:
            raise ValueError(str(exc)) from None
        check_rule_targets(self.rate_limits.rules, pools, {r.name for r in self.routes}, "rate_limits.rules")

    def pool_names(self) -> list[str]:
        """``default`` and the named pools."""
        return [DEFAULT_POOL, *self.pools]

    def pool_configs(self) -> dict[str, PoolConfig]:
        """Every pool by name, ``default`` (made of the top-level settings) first."""
        default = PoolConfig(
            backends=self.backends,
            algorithm=self.algorithm,
            balancing=self.balancing,
            health_check=self.health_check,
            max_connections=self.max_connections,
            max_pending=self.max_pending,
            queue_timeout_sec=self.queue_timeout_sec,
        )
        return {DEFAULT_POOL: default, **self.pools}

    @property
    def unmatched_pool(self) -> str:
        """The pool of a request no route matches ("" = answer 404): ``default_pool``, or with no routes at
        all, ``default``."""
        return self.default_pool or ("" if self.routes else DEFAULT_POOL)


# ---------------------------------------------------------------------------------------------
# Introspection (the loader's environment variables, the error paths, the settings reference)


def strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def struct_fields(tp: Any) -> dict[str, Any] | None:
    """A Struct type's fields and their type hints (None for any other type)."""
    tp = strip_annotated(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        hints = get_type_hints(tp, include_extras=True)
        return {name: hints[name] for name in tp.__struct_fields__}
    return None
