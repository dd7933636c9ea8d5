"""From an inspected container (``docker inspect`` JSON) to a backend: labels, ports, networks, state."""

from __future__ import annotations

from typing import Any

import pytest

from services.discovery.seeding import DesiredSettings
from services.discovery.sources.docker import DockerSource, Skip, container_backend
from shared.config import DockerDiscoveryConfig, RouteConfig
from shared.models import Backend


def container(
    labels: dict[str, str] | None = None,
    networks: dict[str, str] | None = None,
    exposed: tuple[str, ...] = (),
    **state: Any,
) -> dict[str, Any]:
    return {
        "Id": "c" * 64,
        "Name": "/web1",
        "Config": {
            "Labels": {"lb.enable": "true", **(labels or {})},
            "ExposedPorts": {p: {} for p in exposed} or None,
        },
        "State": {"Status": "running", "Running": True, "Paused": False, "Restarting": False, "Health": None, **state},
        "NetworkSettings": {
            "Networks": {
                n: {"IPAddress": ip, "GlobalIPv6Address": ""}
                for n, ip in (networks or {"bridge": "172.17.0.2"}).items()
            }
        },
    }


def test_defaults_port_80_weight_1() -> None:
    assert container_backend(container()) == Backend(address="172.17.0.2:80", weight=1, origin="docker")


def test_labels_set_port_and_weight() -> None:
    got = container_backend(container({"lb.port": "8080", "lb.weight": "7"}))
    assert isinstance(got, Backend) and (got.address, got.weight) == ("172.17.0.2:8080", 7)


def test_only_exposed_port_is_the_default() -> None:
    got = container_backend(container(exposed=("9000/tcp",)))
    assert isinstance(got, Backend) and got.address == "172.17.0.2:9000"


@pytest.mark.parametrize(
    "exposed",
    [
        ("80/tcp", "443/tcp"),
        ("8080/tcp", "8081/tcp"),  # the project's own image (compose/Dockerfile): the default 80 holds
        ("9000/udp",),  # no TCP port
    ],
)
def test_several_or_no_exposed_tcp_ports_default_to_80(exposed: tuple[str, ...]) -> None:
    got = container_backend(container(exposed=exposed))
    assert isinstance(got, Backend) and got.address == "172.17.0.2:80"


@pytest.mark.parametrize("bad", ["abc", "0", "10001", "1.5", "-2", ""])
def test_bad_weight_skips_the_container(bad: str) -> None:
    got = container_backend(container({"lb.weight": bad}))
    assert isinstance(got, Skip)
    assert "lb.weight" in got.reason


@pytest.mark.parametrize("bad", ["http", "0", "70000"])
def test_bad_port_skips_the_container(bad: str) -> None:
    got = container_backend(container({"lb.port": bad}))
    assert isinstance(got, Skip) and "lb.port" in got.reason


def test_two_networks_alphabetically_first_unless_chosen() -> None:
    two = {"zeta": "10.9.0.2", "alpha": "10.8.0.2"}
    got = container_backend(container(networks=two))
    assert isinstance(got, Backend) and got.address == "10.8.0.2:80"
    # the configured preferred network wins when the container is on it
    got = container_backend(container(networks=two), preferred_network="zeta")
    assert isinstance(got, Backend) and got.address == "10.9.0.2:80"
    got = container_backend(container(networks=two), preferred_network="other")
    assert isinstance(got, Backend) and got.address == "10.8.0.2:80"
    # the label wins over both
    got = container_backend(container({"lb.network": "zeta"}, networks=two), preferred_network="alpha")
    assert isinstance(got, Backend) and got.address == "10.9.0.2:80"


def test_lb_network_that_the_container_is_not_on_is_skipped() -> None:
    got = container_backend(container({"lb.network": "backend"}, networks={"front": "10.0.0.2"}))
    assert isinstance(got, Skip) and "backend" in got.reason


def test_no_address_is_skipped() -> None:
    got = container_backend(container(networks={"host": ""}))
    assert isinstance(got, Skip)


@pytest.mark.parametrize(
    "state",
    [
        {"Running": False, "Status": "exited"},
        {"Paused": True, "Status": "paused"},
        {"Restarting": True},
        {"Health": {"Status": "unhealthy"}},
    ],
)
def test_not_eligible_states(state: dict[str, Any]) -> None:
    assert container_backend(container(**state)) is None


@pytest.mark.parametrize("status", ["healthy", "starting"])
def test_healthy_or_starting_container_is_eligible(status: str) -> None:
    # "starting" is eligible: GoBalancer's own health probes gate its traffic until it answers.
    assert isinstance(container_backend(container(Health={"Status": status})), Backend)


def test_without_the_enable_label_nothing() -> None:
    c = container()
    c["Config"]["Labels"]["lb.enable"] = "false"
    assert container_backend(c) is None


def test_a_container_of_the_projects_own_image_without_lb_port_gets_port_80() -> None:
    """What compose/Dockerfile exposes (issue 19: it was skipped as ambiguous)."""
    from pathlib import Path

    dockerfile = (Path(__file__).parents[3] / "compose" / "Dockerfile").read_text()
    ports = [p for line in dockerfile.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]]
    assert len(ports) >= 2
    got = container_backend(container(exposed=tuple(f"{p}/tcp" for p in ports)))
    assert isinstance(got, Backend) and got.address == "172.17.0.2:80"


# -- pools and routes (lb.pool, lb.host, lb.path_prefix) ------------------------------------------


def test_lb_pool_names_the_pool_and_its_absence_is_the_default_pool() -> None:
    got = container_backend(container({"lb.pool": "web"}))
    assert isinstance(got, Backend) and got.pool == "web"
    plain = container_backend(container())
    assert isinstance(plain, Backend) and plain.pool == "default"


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"lb.pool": "no spaces"}, "invalid lb.pool: pool name 'no spaces'"),
        ({"lb.pool": "p" * 60, "lb.host": "a.localhost"}, "invalid lb.pool: route name 'docker-ppp"),
        ({"lb.pool": "web", "lb.host": "a.localhost:80"}, "invalid lb.host: route 'docker-web': 'a.localhost:80'"),
        ({"lb.pool": "web", "lb.path_prefix": "api"}, "invalid lb.path_prefix: route 'docker-web': 'api'"),
    ],
)
def test_invalid_pool_and_route_labels_skip_the_container(labels: dict[str, str], reason: str) -> None:
    got = container_backend(container(labels))
    assert isinstance(got, Skip) and got.reason.startswith(reason), got


def _source_with(*containers: dict[str, Any]) -> DockerSource:
    source = DockerSource(DockerDiscoveryConfig())
    for i, attrs in enumerate(containers):
        source._update(f"{i:064d}", attrs)
    return source


def test_settings_one_route_per_pool_named_after_it_and_the_pools_of_every_container() -> None:
    source = _source_with(
        container({"lb.pool": "web", "lb.host": "A.Localhost"}, {"n": "10.0.0.1"}),
        container({"lb.pool": "web", "lb.host": "a.localhost"}, {"n": "10.0.0.2"}),
        container({"lb.pool": "api", "lb.path_prefix": "/v1/"}, {"n": "10.0.0.3"}),
        container({"lb.pool": "jobs"}, {"n": "10.0.0.4"}),
        container({}, {"n": "10.0.0.5"}),
    )
    settings = source.settings()
    assert settings.pools == ("api", "default", "jobs", "web")
    assert settings.routes == (
        RouteConfig(name="docker-api", pool="api", path_prefix="/v1"),
        RouteConfig(name="docker-web", pool="web", host="a.localhost"),
    )


def test_settings_disagreeing_containers_of_a_pool_deterministically_use_the_smallest_route() -> None:
    a = container({"lb.pool": "web", "lb.host": "b.localhost"}, {"n": "10.0.0.1"})
    b = container({"lb.pool": "web", "lb.host": "a.localhost", "lb.path_prefix": "/x"}, {"n": "10.0.0.2"})
    first, second = _source_with(a, b).settings(), _source_with(b, a).settings()
    assert first == second
    assert first.routes == (RouteConfig(name="docker-web", pool="web", host="a.localhost", path_prefix="/x"),)


def test_settings_a_stopped_container_takes_its_route_with_it() -> None:
    running = container({"lb.pool": "web", "lb.host": "a.localhost"}, {"n": "10.0.0.1"})
    source = _source_with(running)
    source._update(f"{0:064d}", container({"lb.pool": "web", "lb.host": "a.localhost"}, Running=False))
    assert source.settings() == DesiredSettings(pools=(), routes=())


def test_settings_a_container_relabelled_invalid_takes_its_route_with_it() -> None:
    source = _source_with(container({"lb.pool": "web", "lb.host": "a.localhost"}, {"n": "10.0.0.1"}))
    source._update(f"{0:064d}", container({"lb.pool": "web", "lb.host": "a.localhost:1"}, {"n": "10.0.0.1"}))
    assert source.settings() == DesiredSettings(pools=(), routes=())
