"""The Compose file and the image recipe, statically (no engine needed): what the stack relies on is there."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from shared.config import load_config
from tests.conftest import unavailable
from tests.e2e.docker_env import COMPOSE_FILE, ROOT, compose_command

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
    assert set(services) == {"redis", "proxy", "front", "admin", "discovery", "health", "demo-a", "demo-b"}
    for name, service in services.items():
        assert service["pull_policy"] == "never", name
        assert re.fullmatch(r"gobalancer(-redis|-front)?:local", service["image"]), name
        assert "build" in service, name  # `up` from a clone builds what is missing


def test_how_traffic_reaches_the_replicas(services: dict[str, Any]) -> None:
    # N replicas cannot share a host port: the proxies publish none, the front publishes the one entry port.
    assert "ports" not in services["proxy"]
    (front_port,) = services["front"]["ports"]
    assert front_port.endswith(":8080")
    cfg = (COMPOSE_DIR / "haproxy.cfg").read_text()
    assert re.search(r"server-template \S+ 1-\d+ proxy:8080 .*resolvers docker", cfg)
    # The admin API has no token by default: reachable from this host only.
    (admin_port,) = services["admin"]["ports"]
    assert admin_port.startswith("127.0.0.1:") and admin_port.endswith(":8081")


def test_discovery_reads_the_docker_socket_read_only(services: dict[str, Any]) -> None:
    volumes = services["discovery"]["volumes"]
    assert any(v.endswith(":/var/run/docker.sock:ro") for v in volumes), volumes
    for name, service in services.items():
        if name != "discovery":
            assert not any("docker.sock" in v for v in service.get("volumes", [])), name


def test_demo_backends_are_labelled_for_discovery(services: dict[str, Any]) -> None:
    for name in ("demo-a", "demo-b"):
        assert services[name]["labels"]["lb.enable"] == "true"
        assert services[name]["command"][:3] == ["python3", "-m", "shared.demo_backend"]


def test_the_stack_config_is_valid_for_every_service(services: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in services["admin"]["environment"].items() if k != "GOBALANCER_CONFIG"}
    env["GOBALANCER_ADMIN_TOKEN"] = ""
    config = load_config(COMPOSE_DIR / "gobalancer.yaml", environ=env)
    assert config.discovery.type == "docker"
    assert config.redis.url == "redis://redis:6379/0"
    assert config.admin.listen_address == "0.0.0.0:8081" and config.admin.allow_insecure
    assert config.timeout.drain_sec < 15  # the proxies' stop_grace_period
    assert services["proxy"]["stop_grace_period"] == "15s"


def test_dockerfile_names_no_architecture_and_runs_as_non_root() -> None:
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"amd64|x86_64|arm64|aarch64|--platform", code)
    assert re.search(r"^ARG BASE_IMAGE=", code, re.M)
    assert re.search(r"^USER 10001:10001$", code, re.M)
    assert re.search(r"^HEALTHCHECK ", code, re.M)
