"""The Docker side of the end-to-end tests: engine checks, the Compose stack, plain HTTP helpers.

Nothing here pulls an image: every image is built locally by ``scripts/docker-up`` and checked before use.
Traffic goes only to published loopback ports and to the containers this run started.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shared.redis_server import free_port
from tests.helpers import service_env

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yaml"
# GOBALANCER_E2E_PROXY_PROTOCOL=off: the front sends no PROXY header and the proxies expect none (a proxy build
# whose HTTP listener does not read PROXY headers); the client-address test cannot run then.
NO_PROXY_PROTOCOL = Path(__file__).resolve().parent / "compose" / "no-proxy-protocol.yaml"
APP_IMAGE = "gobalancer:local"
REDIS_IMAGE = "gobalancer-redis:local"
FRONT_IMAGE = "gobalancer-front:local"
IMAGES = (APP_IMAGE, REDIS_IMAGE, FRONT_IMAGE)
# Every container a test starts by itself carries this label (value: the Compose project), for cleanup.
E2E_LABEL = "gobalancer.e2e"
# Every image a test builds carries this one (not E2E_LABEL: its containers inherit the image's labels).
E2E_IMAGE_LABEL = "gobalancer.e2e-image"
# Replicas per proxy service (GOBALANCER_PROXY_REPLICAS): `proxy` and `proxy-b` have 2 each, 4 in all.
PROXY_REPLICAS = 2
PROXY_SERVICES = ("proxy", "proxy-b")
# Service -> running containers expected after `up` (`secrets` runs once and exits).
SERVICES = {
    "redis": 1,
    "docker-api": 1,
    "proxy": PROXY_REPLICAS,
    "proxy-b": PROXY_REPLICAS,
    "front": 1,
    "admin": 1,
    "discovery": 1,
    "health": 1,
    "demo-a": 1,
    "demo-b": 1,
    "demo-web": 1,
    "demo-api": 1,
}


def proxy_protocol_on() -> bool:
    return os.environ.get("GOBALANCER_E2E_PROXY_PROTOCOL", "on") != "off"


def compose_command() -> list[str] | None:
    """Debian's docker-compose v1, else the Compose v2 plugin; None when neither is installed."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=10).returncode == 0:
        return [docker, "compose"]
    return None


def engine_problem() -> str | None:
    """Why the Docker tests cannot run here (None: they can)."""
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed"
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:
        return f"no Docker engine is reachable ({type(exc).__name__}); start one with scripts/docker-up"
    try:
        missing = [image for image in IMAGES if not _has_image(client, image)]
    finally:
        client.close()
    if missing:
        return f"images {', '.join(missing)} are missing; build them with scripts/docker-up (nothing is pulled)"
    if compose_command() is None:
        return "neither docker-compose nor `docker compose` is installed (scripts/docker-up installs it as root)"
    return None


def _has_image(client: Any, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def wait_for(check: Callable[[], T], *, timeout: float, interval: float = 0.1, message: str | Callable[[], str]) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``message`` (or its result) at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # a failing probe is "not yet"
            last = exc
        else:
            if last:
                found: T = last
                return found
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} within {timeout}s (last: {last!r})")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Reply:
    status: int
    backend: str
    body: bytes


def get(host: str, port: int, path: str = "/", *, timeout: float = 3.0, host_header: str = "") -> Reply:
    """One GET on a fresh connection (``Connection: close``); ``host_header``: a Host other than ``host:port``."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Connection": "close", **({"Host": host_header} if host_header else {})}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return Reply(resp.status, resp.getheader("X-Backend", ""), body)
    finally:
        conn.close()


def backends_seen(host: str, port: int, requests: int, *, timeout: float = 3.0, host_header: str = "") -> list[str]:
    """The X-Backend of ``requests`` GETs (failures are "!<error>")."""
    out: list[str] = []
    for _ in range(requests):
        try:
            reply = get(host, port, timeout=timeout, host_header=host_header)
            out.append(reply.backend if reply.status == 200 else f"!{reply.status}")
        except (OSError, http.client.HTTPException) as exc:
            out.append(f"!{type(exc).__name__}")
    return out


def admin_call(
    port: int, method: str, path: str, *, token: str, body: object | None = None, timeout: float = 5.0
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------------
# The stack


@dataclass
class Stack:
    """A Compose project of the stack, started by this test run."""

    project: str
    compose: list[str]
    client: Any  # docker.DockerClient
    http_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The clients network (front + proxies), whose PROXY headers the proxies accept: random, so that two
    # stacks on one engine do not collide.
    clients_subnet: str = field(default_factory=lambda: f"172.30.{random.randrange(100, 250)}.0/24")
    not_ready: str = ""  # why the stack never served traffic (set by the first test that found out)
    proxy_image: str = APP_IMAGE  # GOBALANCER_PROXY_IMAGE: the proxies' image (a test replaces it)

    @property
    def env(self) -> dict[str, str]:
        return service_env(
            GOBALANCER_HTTP_BIND="127.0.0.1",
            GOBALANCER_HTTP_PORT=str(self.http_port),
            GOBALANCER_ADMIN_PORT=str(self.admin_port),
            GOBALANCER_ADMIN_TOKEN=self.token,
            GOBALANCER_CLIENTS_SUBNET=self.clients_subnet,
            GOBALANCER_PROXY_IMAGE=self.proxy_image,
            GOBALANCER_PROXY_REPLICAS=str(PROXY_REPLICAS),
            COMPOSE_PROJECT_NAME=self.project,
        )

    @property
    def files(self) -> list[str]:
        files = ["-f", str(COMPOSE_FILE)]
        if not proxy_protocol_on():
            files += ["-f", str(NO_PROXY_PROTOCOL)]
        extra = os.environ.get("GOBALANCER_E2E_COMPOSE_OVERRIDE", "")  # e.g. to try a setting by hand
        if extra:
            files += ["-f", extra]
        return files

    def run(
        self, *args: str, timeout: float = 120.0, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose, "-p", self.project, *self.files, *args]
        done = subprocess.run(cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def up(self) -> None:
        for attempt in range(3):
            done = self.run("up", "-d", "--no-build", timeout=180, check=False)
            if done.returncode == 0:
                return
            retryable = ("address already in use", "Pool overlaps")
            if not any(text in done.stderr for text in retryable) or attempt == 2:
                raise AssertionError(f"up failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
            # A free port taken by another process in the meantime, or the random clients subnet already in use
            # (the machine is shared): new ports and subnet, again.
            self.down()
            self.http_port, self.admin_port = free_port(), free_port()
            self.clients_subnet = f"172.30.{random.randrange(100, 250)}.0/24"

    def down(self) -> None:
        self.run("down", "--remove-orphans", "--volumes", "--timeout", "15", timeout=120, check=False)

    def containers(self, service: str | None = None, *, all: bool = False) -> list[Any]:
        labels = [f"com.docker.compose.project={self.project}"]
        if service is not None:
            labels.append(f"com.docker.compose.service={service}")
        found: list[Any] = self.client.containers.list(all=all, filters={"label": labels})
        return sorted(found, key=lambda c: c.name)

    def proxies(self) -> list[Any]:
        """The running proxy replicas of both proxy services."""
        return [c for service in PROXY_SERVICES for c in self.containers(service)]

    def container(self, service: str) -> Any:
        (only,) = self.containers(service)
        return only

    def network(self, name: str = "backends") -> str:
        """The engine's name of one of the stack's networks (clients, backends, control, dockerapi, admin-port)."""
        return f"{self.project}_{name}"

    def ip(self, container: Any, network: str = "backends") -> str:
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        ip: str = networks[self.network(network)]["IPAddress"]
        assert ip, f"{container.name} has no address on {self.network(network)}"
        return ip

    def start_demo(self, name: str, *, labelled: bool) -> Any:
        """A demo backend container on the stack's backends network (labelled lb.enable=true or not)."""
        labels = {E2E_LABEL: self.project}
        if labelled:
            labels.update({"lb.enable": "true", "lb.port": "80"})
        return self.client.containers.run(
            APP_IMAGE,
            ["python3", "-m", "shared.demo_backend", "--listen", "0.0.0.0:80", "--name", name],
            name=f"{self.project}-{name.lower()}",
            detach=True,
            init=True,
            labels=labels,
            network=self.network(),
            read_only=True,
            cap_drop=["ALL"],
        )

    def remove_strays(self) -> None:
        """Containers this run started outside Compose (by label), then anything left of the project, then the
        images this run built (by label)."""
        for label in (f"{E2E_LABEL}={self.project}", f"com.docker.compose.project={self.project}"):
            for c in self.client.containers.list(all=True, filters={"label": label}):
                with contextlib.suppress(Exception):  # already gone
                    c.remove(force=True)
        for image in self.client.images.list(filters={"label": f"{E2E_IMAGE_LABEL}={self.project}"}):
            with contextlib.suppress(Exception):  # already gone
                self.client.images.remove(image.id, force=True)

    def build_proxy_image(self, tag: str) -> Any:
        """A new image of the proxies: the stack's app image plus a label (a new image ID, built in a second,
        offline: FROM a local image, nothing pulled). Removed with the stack (remove_strays)."""
        dockerfile = f"FROM {APP_IMAGE}\nLABEL {E2E_IMAGE_LABEL}={self.project} {E2E_IMAGE_LABEL}.tag={tag}\n"
        image, _ = self.client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()), tag=tag, pull=False, network_mode="none", rm=True
        )
        return image

    def front(self, requests: int, host_header: str = "") -> list[str]:
        return backends_seen("127.0.0.1", self.http_port, requests, host_header=host_header)

    def admin(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        return admin_call(self.admin_port, method, path, token=self.token, body=body)

    def logs(self, service: str, tail: int = 30) -> str:
        out = []
        for c in self.containers(service, all=True):
            text = c.logs(tail=tail).decode(errors="replace")
            out.append(f"--- {c.name} ({c.status})\n{text}")
        return "\n".join(out)
