"""The Compose file and the image recipe, statically (no engine needed): what the stack relies on is there."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import load_config
from tests.conftest import unavailable
from tests.e2e.docker_env import COMPOSE_FILE, ROOT, compose_command
from tests.helpers import service_env

COMPOSE_DIR = ROOT / "compose"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    found: dict[str, Any] = data["services"]
    return found


def test_compose_config_is_valid() -> None:
    compose = compose_command()
    if compose is None:
        unavailable("docker-compose is not installed (scripts/docker-up installs it as root)")
    assert compose is not None
    done = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_every_service_is_there_and_nothing_is_pulled(services: dict[str, Any]) -> None:
    assert set(services) == {
        "secrets",
        "redis",
        "proxy",
        "proxy-b",
        "front",
        "admin",
        "discovery",
        "docker-api",
        "health",
        "demo-a",
        "demo-b",
        "demo-web",
        "demo-api",
    }
    for name, service in services.items():
        assert service["pull_policy"] == "never", name
        image = service["image"]
        if name in ("proxy", "proxy-b"):  # a new tag in GOBALANCER_PROXY_IMAGE + `up -d` replaces the proxies
            assert image == "${GOBALANCER_PROXY_IMAGE:-gobalancer:local}", name
        else:
            assert re.fullmatch(r"gobalancer(-redis|-front)?:local", image), name
        assert "build" in service, name  # `up` from a clone builds what is missing


def test_how_traffic_reaches_the_replicas(services: dict[str, Any]) -> None:
    # N replicas cannot share a host port: the proxies publish none, the front publishes the one entry port.
    assert "ports" not in services["proxy"]
    (front_port,) = services["front"]["ports"]
    assert front_port.endswith(":8080")
    cfg = (COMPOSE_DIR / "haproxy.cfg").read_text()
    assert re.search(r"^\s+default-server check port 9100 inter 500ms .*resolvers docker", cfg, re.M)
    assert re.search(r"^\s+default-server .* observe layer4 error-limit 1 on-error mark-down ", cfg, re.M)
    # Readiness over HTTP, and the client's address in a PROXY v2 header unless FRONT_SEND_PROXY=off.
    assert re.search(r"^\s+option httpchk GET /ready$", cfg, re.M)
    assert re.search(r"^\s+server-template proxy 1-16 proxy:8080 send-proxy-v2$", cfg, re.M)
    assert services["front"]["environment"]["FRONT_SEND_PROXY"] == "v2"
    proxy_env = services["proxy"]["environment"]
    assert proxy_env["GOBALANCER_PROXY_PROXY_PROTOCOL_FROM"] == '["${GOBALANCER_CLIENTS_SUBNET:-172.30.231.0/24}"]'
    (subnet,) = yaml.safe_load(COMPOSE_FILE.read_text())["networks"]["clients"]["ipam"]["config"]
    assert subnet == {"subnet": "${GOBALANCER_CLIENTS_SUBNET:-172.30.231.0/24}"}
    assert proxy_env["GOBALANCER_METRICS_PROXY_LISTEN_ADDRESS"] == ":9100"
    # The admin API: published on the host's loopback only (and it always has a token).
    (admin_port,) = services["admin"]["ports"]
    assert admin_port.startswith("127.0.0.1:") and admin_port.endswith(":8081")


def test_a_plain_up_replaces_the_two_proxy_services_one_after_the_other(services: dict[str, Any]) -> None:
    """What makes `up -d` with a new proxy image fail nothing (the e2e suite measures it): two services of the
    same replicas, `proxy-b` recreated only once `proxy` is healthy, healthy meaning GET /ready says 200, both
    under the one name the front resolves, and the front depending on neither (Compose v2 stops the
    dependents of a service it recreates)."""
    proxy, proxy_b = services["proxy"], services["proxy-b"]
    assert {k: v for k, v in proxy.items() if k != "depends_on"} == {
        k: v for k, v in proxy_b.items() if k != "depends_on"
    }
    assert proxy_b["depends_on"]["proxy"] == {"condition": "service_healthy"}
    assert "proxy-b" not in proxy["depends_on"]
    assert proxy["scale"] == "${GOBALANCER_PROXY_REPLICAS:-1}"
    assert proxy["networks"]["clients"] == {"aliases": ["proxy"]}
    check = proxy["healthcheck"]
    assert check["test"][:3] == ["CMD", "bash", "-c"] and "/dev/tcp/127.0.0.1/9100" in check["test"][3]
    assert "GET /ready " in check["test"][3] and "= 200 ]" in check["test"][3]
    assert check["interval"] == "1s"
    assert "depends_on" not in services["front"]
    # Longer than the replica's shutdown delay + drain (compose/gobalancer.yaml), so `up` waits for its drain.
    assert proxy["stop_grace_period"] == "20s"


def test_the_proxies_health_check_runs_in_the_image() -> None:
    """The health check's shell line, run by bash against a real /ready listener: 200 -> 0, 503 -> 1, nothing
    listening -> 1 (the image's bash is Debian's, like the host's)."""
    import http.server
    import threading

    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    line = services["proxy"]["healthcheck"]["test"][3].replace("$$", "$")
    status = {"code": 200}

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert self.path == "/ready"
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        here = line.replace("127.0.0.1/9100", f"127.0.0.1/{port}")
        assert here != line
        assert subprocess.run(["bash", "-c", here], timeout=10).returncode == 0
        status["code"] = 503
        assert subprocess.run(["bash", "-c", here], timeout=10).returncode != 0
    finally:
        server.shutdown()
        server.server_close()
    assert subprocess.run(["bash", "-c", here], capture_output=True, timeout=10).returncode != 0


def test_the_front_holds_connections_while_no_replica_is_ready(services: dict[str, Any]) -> None:
    """compose/front.lua, run for every new connection: it waits (bounded) for a replica that is up and passed
    its last check, so a moment with no ready replica delays requests instead of failing them."""
    assert "./front.lua:/etc/gobalancer/front.lua:ro" in services["front"]["volumes"]
    cfg = (COMPOSE_DIR / "haproxy.cfg").read_text()
    assert re.search(r"^\s+lua-load /etc/gobalancer/front.lua$", cfg, re.M)
    frontend = cfg[cfg.index("frontend clients") : cfg.index("backend proxy_replicas")]
    assert re.search(r"^\s+tcp-request inspect-delay 30s$", frontend, re.M)  # a yielding action needs it
    assert re.search(r"^\s+tcp-request content lua.wait_for_replica proxy_replicas 30000$", frontend, re.M)
    lua = (COMPOSE_DIR / "front.lua").read_text()
    assert 'core.register_action("wait_for_replica", { "tcp-req" }' in lua
    assert 'stats.check_status == "L7OK"' in lua  # up *and* checked: not a replica DNS just found


def test_only_the_docker_api_filter_holds_the_socket(services: dict[str, Any]) -> None:
    volumes = services["docker-api"]["volumes"]
    assert any(v.endswith(":/var/run/docker.sock:ro") for v in volumes), volumes
    assert services["docker-api"]["networks"] == ["dockerapi"]
    for name, service in services.items():
        if name != "docker-api":
            assert not any("docker.sock" in v for v in service.get("volumes", [])), name
            assert service.get("user") in (None, "10001", "10001:10001"), name  # discovery too: not root
    assert services["discovery"]["environment"]["GOBALANCER_DISCOVERY_DOCKER_URL"] == "tcp://docker-api:2375"


def test_networks_keep_backends_away_from_the_control_plane(services: dict[str, Any]) -> None:
    networks = yaml.safe_load(COMPOSE_FILE.read_text())["networks"]
    assert networks["control"]["internal"] is True and networks["dockerapi"]["internal"] is True
    on = {name: set(service.get("networks", [])) for name, service in services.items()}
    assert on["demo-a"] == on["demo-b"] == on["demo-web"] == on["demo-api"] == {"backends"}
    assert on["redis"] == {"control"}
    assert on["admin"] == {"control", "admin-port"}
    assert on["front"] == {"clients"}
    assert on["proxy"] == on["proxy-b"] == {"clients", "backends", "control"}
    assert on["health"] == {"control", "backends"}
    assert on["discovery"] == {"control", "dockerapi"}
    # No service but the proxies and health shares a network with the backends.
    with_backends = {name for name, nets in on.items() if "backends" in nets}
    assert with_backends == {"proxy", "proxy-b", "health", "demo-a", "demo-b", "demo-web", "demo-api"}
    assert services["secrets"]["network_mode"] == "none"
    # Redis loads the ACL file the secrets service writes.
    command = services["redis"]["command"]
    assert command[command.index("--aclfile") + 1] == "/run/gobalancer/users.acl"


def test_demo_backends_are_labelled_for_discovery(services: dict[str, Any]) -> None:
    for name in ("demo-a", "demo-b", "demo-web", "demo-api"):
        assert services[name]["labels"]["lb.enable"] == "true"
        assert services[name]["command"][:3] == ["python3", "-m", "shared.demo_backend"]
    # Two services on two host names, each its own pool (A and B stay the default pool's).
    labels = {name: s.get("labels", {}) for name, s in services.items()}
    pools = {name: (label.get("lb.pool"), label.get("lb.host")) for name, label in labels.items()}
    assert pools["demo-a"] == pools["demo-b"] == (None, None)
    assert pools["demo-web"] == ("web", "a.localhost") and pools["demo-api"] == ("api", "b.localhost")


def test_the_secrets_service_makes_the_configs_once(tmp_path: Path, services: dict[str, Any]) -> None:
    """compose/secrets_init.py (the `secrets` service) on the host: generates a Redis password and an admin
    token on the first run, keeps them on the next, takes GOBALANCER_ADMIN_TOKEN when given, and writes
    configs the services accept."""

    def run(token: str = "") -> subprocess.CompletedProcess[str]:
        env = service_env(SECRETS_DIR=str(tmp_path), TEMPLATE=str(COMPOSE_DIR / "gobalancer.yaml"), ADMIN_TOKEN=token)
        env["PYTHONPATH"] = str(ROOT)
        return subprocess.run(
            [sys.executable, str(COMPOSE_DIR / "secrets_init.py")], env=env, capture_output=True, text=True, timeout=60
        )

    first = run()
    assert first.returncode == 0, first.stderr
    assert "admin token generated; read it with: docker-compose" in first.stdout
    password = (tmp_path / "redis-password").read_text().strip()
    token = (tmp_path / "admin-token").read_text().strip()
    assert len(password) == 64 and len(token) >= 40
    for name in ("redis-password", "admin-token", "config.yaml", "admin.yaml"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    acl = (tmp_path / "users.acl").read_text()
    assert f"user gobalancer on #{hashlib.sha256(password.encode()).hexdigest()} " in acl
    assert password not in acl
    assert "user default on nopass resetchannels -@all +ping" in acl
    config = load_config(tmp_path / "config.yaml", environ={})
    admin = load_config(tmp_path / "admin.yaml", environ={})
    assert config.redis.url == admin.redis.url == f"redis://gobalancer:{password}@redis:6379/0"
    assert admin.admin.token == token and not config.admin.token and not admin.admin.allow_insecure
    assert config.proxy.shutdown_delay_sec == 5.0 and config.discovery.type == "docker"
    # The proxies' whole shutdown fits in their stop_grace_period.
    grace = float(services["proxy"]["stop_grace_period"].removesuffix("s"))
    assert config.proxy.shutdown_delay_sec + config.timeout.drain_sec < grace

    second = run()
    assert second.returncode == 0 and "admin token kept" in second.stdout
    assert (tmp_path / "redis-password").read_text().strip() == password
    assert load_config(tmp_path / "admin.yaml", environ={}).admin.token == token
    third = run(token="operator-chosen")
    assert third.returncode == 0 and "from GOBALANCER_ADMIN_TOKEN" in third.stdout
    assert load_config(tmp_path / "admin.yaml", environ={}).admin.token == "operator-chosen"
    assert services["secrets"]["environment"]["ADMIN_TOKEN"] == "${GOBALANCER_ADMIN_TOKEN:-}"
    for name in ("proxy", "admin", "discovery", "health"):
        assert services[name]["depends_on"]["secrets"] == {"condition": "service_completed_successfully"}, name


def _filter_module() -> Any:
    spec = importlib.util.spec_from_file_location("docker_api_filter", COMPOSE_DIR / "docker_api_filter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n", 0),
        (b"HEAD /_ping HTTP/1.1\r\n\r\n", 0),
        (b"GET /v1.41/version HTTP/1.1\r\n\r\n", 0),
        (b"GET /v1.41/containers/json?filters=%7B%7D HTTP/1.1\r\n\r\n", 0),
        (b"GET /v1.41/containers/0123abc/json HTTP/1.1\r\n\r\n", 0),
        (b"GET /v1.41/events?since=1&filters=x HTTP/1.1\r\n\r\n", 0),
        (b"POST /v1.41/volumes/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n", 405),
        (b"POST /v1.41/containers/create HTTP/1.1\r\n\r\n", 405),
        (b"DELETE /v1.41/containers/abc HTTP/1.1\r\n\r\n", 405),
        (b"GET /v1.41/containers/abc/logs HTTP/1.1\r\n\r\n", 403),
        (b"GET /v1.41/containers/abc/archive?path=/ HTTP/1.1\r\n\r\n", 403),
        (b"GET /v1.41/images/json HTTP/1.1\r\n\r\n", 403),
        (b"GET /v1.41/containers/../images/json HTTP/1.1\r\n\r\n", 403),
        (b"GET /v1.41/exec/abc/json HTTP/1.1\r\n\r\n", 403),
        (b"GET /v1.41/containers/../json HTTP/1.1\r\n\r\n", 403),
        (b"GET /_ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 403),  # no body may ride along
        (b"GET /_ping HTTP/1.1\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n", 0),  # dropped: forwarded closed
        (b"GET  /_ping HTTP/1.1\r\n\r\n", 400),
        (b"GET /_ping HTTP/2\r\n\r\n", 400),
        (b"GET /_p\xc3\xafng HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_docker_api_filter_allows_only_discoverys_reads(head: bytes, status: int) -> None:
    got, reason, forward = _filter_module().check(head)
    assert got == status, reason
    if status == 0:
        lines = forward.decode().split("\r\n")
        assert lines[-3:] == ["Connection: close", "", ""]
        assert not any(line.lower().startswith(("upgrade", "transfer-encoding")) for line in lines)
        assert sum(1 for line in lines if line.lower().startswith("connection")) == 1


def test_dockerfile_names_no_architecture_and_runs_as_non_root() -> None:
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"amd64|x86_64|arm64|aarch64|--platform", code)
    assert re.search(r"^ARG BASE_IMAGE=", code, re.M)
    assert re.search(r"^USER 10001:10001$", code, re.M)
    assert re.search(r"^HEALTHCHECK ", code, re.M)
