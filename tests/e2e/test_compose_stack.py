"""The Compose stack on a real Docker engine: 3 proxy replicas behind the front, admin, discovery (Docker),
health, Redis and two demo backends labelled lb.enable=true.

Needs the engine and the local images (``scripts/docker-up``); skips with the reason when they are missing,
fails instead when CI=true. Traffic goes to the published loopback ports (front, admin) and to the
containers of this run. The tests run in file order on one stack; the last one takes it down.
"""

from __future__ import annotations

import functools
import http.client
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.e2e.docker_env import E2E_LABEL, PROXY_REPLICAS, SERVICES, Stack, backends_seen, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

APP_SERVICES = ("proxy", "admin", "discovery", "health", "demo-a", "demo-b")


def _ready(stack: Stack) -> None:
    """Both demo backends answer through the front (discovery, health and the proxies all did their part).
    Once this has failed, the later tests of the module fail at once with the same reason."""
    if stack.not_ready:
        pytest.fail(f"the stack never served traffic: {stack.not_ready}", pytrace=False)
    last: list[str] = []

    def both() -> bool:
        last[:] = stack.front(6)
        return {"A", "B"} <= set(last)

    try:
        _wait_both(stack, both, last)
    except AssertionError as exc:
        stack.not_ready = str(exc).splitlines()[0]
        raise


def _wait_both(stack: Stack, both: Any, last: list[str]) -> None:
    wait_for(
        both,
        timeout=30,
        interval=0.2,
        message=lambda: (
            f"both demo backends answering through the front (last replies: {last})\n"
            + stack.logs("proxy", 5)
            + stack.logs("discovery", 10)
            + stack.logs("front", 5)
        ),
    )


def test_every_service_runs_healthy_and_stays_up(stack: Stack) -> None:
    counts = {service: len(stack.containers(service)) for service in SERVICES}
    assert counts == SERVICES

    def all_healthy() -> bool:
        for c in stack.containers():
            c.reload()
            health = c.attrs["State"].get("Health")
            if health is not None and health["Status"] != "healthy":
                return False
        return True

    # The images' HEALTHCHECKs run every 10 s: the first verdict comes ~10 s after the start.
    wait_for(all_healthy, timeout=60, interval=1, message="every container with a HEALTHCHECK healthy")
    for c in stack.containers():
        assert c.status == "running", c.name
        assert c.attrs["RestartCount"] == 0, f"{c.name} restarted:\n{c.logs(tail=20).decode(errors='replace')}"
    for service in APP_SERVICES:
        for c in stack.containers(service):
            config = c.attrs["Config"]
            assert config["Image"] == "gobalancer:local"
            # Non-root, except discovery which holds the Docker socket (root-equivalent in any case).
            expected_user = "0" if service == "discovery" else "10001:10001"
            assert (config["User"] or c.image.attrs["Config"]["User"]) == expected_user, c.name
            assert c.attrs["HostConfig"]["ReadonlyRootfs"] is True, c.name
    # The proxies publish nothing (N replicas cannot share a host port): the front owns the published port.
    for c in stack.containers("proxy"):
        assert not any(c.attrs["HostConfig"]["PortBindings"] or {}), c.name
    front_ports = stack.container("front").attrs["HostConfig"]["PortBindings"]["8080/tcp"]
    assert front_ports == [{"HostIp": "127.0.0.1", "HostPort": str(stack.http_port)}]
    admin_ports = stack.container("admin").attrs["HostConfig"]["PortBindings"]["8081/tcp"]
    assert admin_ports == [{"HostIp": "127.0.0.1", "HostPort": str(stack.admin_port)}]
    mounts = {m["Destination"]: m for m in stack.container("discovery").attrs["Mounts"]}
    assert mounts["/var/run/docker.sock"]["RW"] is False


def test_traffic_reaches_both_demo_backends(stack: Stack) -> None:
    _ready(stack)
    seen = stack.front(30)
    failures = [s for s in seen if s.startswith("!")]
    assert failures == []
    assert set(seen) == {"A", "B"}
    # Round robin over two healthy backends: neither is starved.
    assert min(seen.count("A"), seen.count("B")) >= 5, seen


def _routes_to(name: str, ip: str) -> bool:
    return name in backends_seen(ip, 8080, 6)


def _no_route_to(name: str, ip: str) -> bool:
    return name not in backends_seen(ip, 8080, 6)


def test_backend_added_through_admin_is_routed_by_every_replica(stack: Stack) -> None:
    _ready(stack)
    extra = stack.start_demo("X", labelled=False)  # not labelled: only the admin API makes it a backend
    address = f"{stack.ip(extra)}:80"
    try:
        status, body = stack.admin("POST", "/backends", {"address": address, "weight": 1})
        assert status == 201, body
        assert body["address"] == address
        replicas = [stack.ip(c) for c in stack.containers("proxy")]
        assert len(replicas) == PROXY_REPLICAS
        for ip in replicas:
            # Each replica directly (its container address), not through the front.
            wait_for(
                functools.partial(_routes_to, "X", ip),
                timeout=10,
                interval=0.1,
                message=f"proxy replica {ip} routing to the backend added through the admin API",
            )
        status, _ = stack.admin("DELETE", f"/backends/{address}")
        assert status == 204
        for ip in replicas:
            wait_for(
                functools.partial(_no_route_to, "X", ip),
                timeout=10,
                message=f"proxy replica {ip} no longer routing to the removed backend",
            )
    finally:
        stack.admin("DELETE", f"/backends/{address}")
        extra.remove(force=True)


def test_labelled_container_receives_traffic_within_5_seconds(stack: Stack) -> None:
    _ready(stack)
    started = time.monotonic()
    new = stack.start_demo("C", labelled=True)  # returns once the container has started
    try:
        wait_for(
            lambda: "C" in stack.front(3),
            timeout=5,
            interval=0.05,
            message=lambda: (
                "a new container labelled lb.enable=true receiving traffic through the front\n"
                + stack.logs("discovery", 10)
            ),
        )
        elapsed = time.monotonic() - started
        assert elapsed <= 5.0, f"first response from the new container after {elapsed:.2f}s"
    finally:
        new.remove(force=True)
    # Gone from the engine: discovery removes it and traffic stays on A and B.
    wait_for(lambda: set(stack.front(6)) == {"A", "B"}, timeout=10, message="traffic back on A and B only")


class Load:
    """Bounded keep-alive GET load through the front: ``workers`` clients, at most ``max_requests`` and
    ``max_seconds``. Records (completion time, backend name or "!error") for every request."""

    def __init__(self, port: int, *, workers: int = 4, max_requests: int = 6000, max_seconds: float = 20.0) -> None:
        self.port = port
        self.workers = workers
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.results: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=10)

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def _work(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stopping.is_set() and time.monotonic() < self.deadline and self.count() < self.max_requests:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("GET", "/load")
                resp = conn.getresponse()
                resp.read()
                outcome = resp.getheader("X-Backend", "") if resp.status == 200 else f"!{resp.status}"
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"!{type(exc).__name__}"
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.results.append((time.monotonic(), outcome))
        if conn is not None:
            conn.close()


def test_backend_stopped_under_load_fails_no_request(stack: Stack) -> None:
    _ready(stack)
    victim = stack.container("demo-a")
    with Load(stack.http_port) as load:
        wait_for(lambda: load.count() >= 300, timeout=10, message="300 requests through the front")
        victim.stop(timeout=10)  # SIGTERM; returns once the container has exited
        stopped_at = time.monotonic()
        wait_for(
            lambda: sum(1 for t, _ in list(load.results) if t > stopped_at) >= 300,
            timeout=10,
            message=lambda: (
                "300 more requests after the stop (outcomes after it: "
                + str(Counter(o for t, o in list(load.results) if t > stopped_at))
                + ")"
            ),
        )
    results = list(load.results)
    failures = [outcome for _, outcome in results if not outcome or outcome.startswith("!")]
    assert failures == [], f"{len(failures)} of {len(results)} requests failed: {Counter(failures)}"
    before = {outcome for t, outcome in results if t <= stopped_at}
    after = [outcome for t, outcome in results if t > stopped_at]
    assert "A" in before, "demo-a received no traffic before it was stopped"
    assert set(after) == {"B"}, f"after the stop: {sorted(set(after))}"
    # Put it back for whatever runs next: discovery sees it start again.
    victim.start()
    wait_for(lambda: "A" in stack.front(6), timeout=20, message="demo-a back in rotation after a restart")


def test_compose_down_leaves_nothing(stack: Stack, docker_client: Any) -> None:
    # Containers a test started on the project's network must be gone before `down` (it removes the network).
    assert docker_client.containers.list(all=True, filters={"label": f"{E2E_LABEL}={stack.project}"}) == []
    done = stack.run("down", "--remove-orphans", "--timeout", "15", timeout=120)
    assert done.returncode == 0
    project = f"com.docker.compose.project={stack.project}"
    assert docker_client.containers.list(all=True, filters={"label": project}) == []
    assert docker_client.networks.list(filters={"label": project}) == []
    # Redis's append-only data stays in its named volume across `down`/`up` (that is what it is for);
    # `down --volumes` removes it.
    volumes = [v.name for v in docker_client.volumes.list(filters={"label": project})]
    assert volumes == [f"{stack.project}_redis-data"], volumes
    stack.run("down", "--volumes", timeout=120)
    assert docker_client.volumes.list(filters={"label": project}) == []
