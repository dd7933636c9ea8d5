"""The images built by scripts/docker-up, on a real engine (skipped with the reason when there is none;
a failure with CI=true)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.docker_env import APP_IMAGE, FRONT_IMAGE, REDIS_IMAGE, ROOT

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

SERVICE_MODULES = ("proxy", "admin", "discovery", "health")


def run(client: Any, image: str, command: list[str], **kwargs: Any) -> tuple[int, str]:
    """Run a one-off container with no network and a read-only root; (exit status, output)."""
    container = client.containers.run(
        image, command, detach=True, network_mode="none", read_only=True, labels={"gobalancer.e2e": "image"}, **kwargs
    )
    try:
        status = container.wait(timeout=60)["StatusCode"]
        return status, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_app_image_runs_as_non_root_with_a_healthcheck(docker_client: Any) -> None:
    image = docker_client.images.get(APP_IMAGE)
    config = image.attrs["Config"]
    assert config["User"] == "10001:10001"
    assert "gobalancer_healthcheck.py" in " ".join(config["Healthcheck"]["Test"])
    assert config["Cmd"] == ["python3", "-m", "services.proxy"]
    # Small: the base (Debian + Python) plus the runtime dependencies, no build tools or caches.
    assert image.attrs["Size"] < 350_000_000, f"{image.attrs['Size'] / 1e6:.0f} MB"


def test_every_service_imports_in_the_image(docker_client: Any) -> None:
    """The runtime-only dependency set is complete (an import error would only show when a service starts)."""
    imports = "; ".join(f"import services.{name}.main" for name in SERVICE_MODULES)
    status, output = run(docker_client, APP_IMAGE, ["python3", "-c", f"{imports}; import shared.demo_backend"])
    assert status == 0, output
    status, output = run(docker_client, APP_IMAGE, ["id", "-u"])
    assert (status, output.strip()) == (0, "10001")


def test_healthcheck_says_why_when_no_service_runs(docker_client: Any) -> None:
    status, output = run(docker_client, APP_IMAGE, ["python3", "/app/gobalancer_healthcheck.py"])
    assert status == 1
    assert "unhealthy: RuntimeError: no GoBalancer service found" in output


def test_infra_images(docker_client: Any) -> None:
    status, output = run(docker_client, REDIS_IMAGE, ["redis-server", "--version"])
    assert status == 0 and "Redis server" in output, output
    # The front's config and its Lua (the hold while no replica is ready), mounted as Compose mounts them.
    mounts = {
        str(ROOT / "compose" / name): {"bind": f"/etc/gobalancer/{name}", "mode": "ro"}
        for name in ("haproxy.cfg", "front.lua")
    }
    status, output = run(
        docker_client, FRONT_IMAGE, ["haproxy", "-c", "-f", "/etc/gobalancer/haproxy.cfg"], volumes=mounts
    )
    assert status == 0 and "valid" in output, output
