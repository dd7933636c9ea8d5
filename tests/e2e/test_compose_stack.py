"""The Compose stack on a real Docker engine: 2 + 2 proxy replicas (services proxy and proxy-b) behind the
front, admin, discovery (Docker), health, Redis and two demo backends labelled lb.enable=true.

Needs the engine and the local images (``scripts/docker-up``); skips with the reason when they are missing,
fails instead when CI=true. Traffic goes to the published loopback ports (front, admin) and to the
containers of this run. The tests run in file order on one stack; the last one takes it down.
"""

from __future__ import annotations

import functools
import http.client
import itertools
import json
import os
import random
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import unavailable
from tests.e2e.docker_env import (
    APP_IMAGE,
    E2E_LABEL,
    PROXY_REPLICAS,
    ROOT,
    SERVICES,
    Stack,
    admin_call,
    backends_seen,
    proxy_protocol_on,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

APP_SERVICES = ("proxy", "proxy-b", "admin", "discovery", "health", "demo-a", "demo-b", "demo-web", "demo-api")


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
    for service in (*APP_SERVICES, "docker-api"):
        for c in stack.containers(service):
            config = c.attrs["Config"]
            assert config["Image"] == "gobalancer:local"
            # Non-root, discovery included; only the Docker API filter, which opens the socket, is uid 0.
            expected_user = "0" if service == "docker-api" else "10001:10001"
            assert (config["User"] or c.image.attrs["Config"]["User"]) == expected_user, c.name
            assert c.attrs["HostConfig"]["ReadonlyRootfs"] is True, c.name
            assert c.attrs["HostConfig"]["CapDrop"] == ["ALL"], c.name
    # The proxies publish nothing (N replicas cannot share a host port): the front owns the published port.
    for c in stack.proxies():
        assert not any(c.attrs["HostConfig"]["PortBindings"] or {}), c.name
    front_ports = stack.container("front").attrs["HostConfig"]["PortBindings"]["8080/tcp"]
    assert front_ports == [{"HostIp": "127.0.0.1", "HostPort": str(stack.http_port)}]
    admin_ports = stack.container("admin").attrs["HostConfig"]["PortBindings"]["8081/tcp"]
    assert admin_ports == [{"HostIp": "127.0.0.1", "HostPort": str(stack.admin_port)}]
    mounts = {m["Destination"]: m for m in stack.container("docker-api").attrs["Mounts"]}
    assert mounts["/var/run/docker.sock"]["RW"] is False
    for c in stack.containers():
        if c.name != stack.container("docker-api").name:
            assert "/var/run/docker.sock" not in {m["Destination"] for m in c.attrs["Mounts"]}, c.name
    (secrets,) = stack.containers("secrets", all=True)
    assert secrets.attrs["State"]["ExitCode"] == 0, secrets.logs().decode(errors="replace")


def test_traffic_reaches_both_demo_backends(stack: Stack) -> None:
    _ready(stack)
    seen = stack.front(30)
    failures = [s for s in seen if s.startswith("!")]
    assert failures == []
    assert set(seen) == {"A", "B"}
    # Round robin over two healthy backends: neither is starved.
    assert min(seen.count("A"), seen.count("B")) >= 5, seen


def test_two_services_on_two_host_names(stack: Stack) -> None:
    """demo-web (lb.pool web, lb.host a.localhost) and demo-api (pool api, b.localhost): discovery made their pools
    and routes, each host answers from its service only, and every other host still reaches the default pool."""
    _ready(stack)
    last: dict[str, list[str]] = {}

    def routed() -> bool:
        last["a"], last["b"] = stack.front(4, "a.localhost"), stack.front(4, "b.localhost")
        return set(last["a"]) == {"WEB"} and set(last["b"]) == {"API"}

    wait_for(
        routed,
        timeout=20,
        interval=0.2,
        message=lambda: f"each host answered by its service (last replies: {last})\n" + stack.logs("discovery", 10),
    )
    # Every replica serves both hosts: enough requests to cross the front's spread over the four proxies.
    assert set(stack.front(12, "a.localhost")) == {"WEB"}
    assert set(stack.front(12, "b.localhost")) == {"API"}
    assert set(stack.front(12)) == {"A", "B"}  # no route matches the plain address: the default pool


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
        replicas = [stack.ip(c) for c in stack.proxies()]
        assert len(replicas) == 2 * PROXY_REPLICAS
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
    """Bounded GET load through the front: ``workers`` keep-alive clients in a tight loop, plus ``fresh``
    clients opening a new connection per request (the accept path) and ``idle`` keep-alive clients pausing up
    to 0.6 s between requests (their connection is idle when a replica stops); at most ``max_requests`` and
    ``max_seconds``; a request not answered within ``timeout`` seconds fails. Records (completion time, backend
    name or "!error") for every request."""

    def __init__(
        self,
        port: int,
        *,
        workers: int = 4,
        fresh: int = 0,
        idle: int = 0,
        max_requests: int = 6000,
        max_seconds: float = 20.0,
        timeout: float = 15.0,
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.workers = workers
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.results: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        kinds = ["tight"] * workers + ["fresh"] * fresh + ["idle"] * idle
        self.threads = [threading.Thread(target=self._work, args=(kind,), daemon=True) for kind in kinds]

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

    def _work(self, kind: str) -> None:
        conn: http.client.HTTPConnection | None = None
        pauses = random.Random(threading.get_ident())
        headers = {"Connection": "close"} if kind == "fresh" else {}
        while not self.stopping.is_set() and time.monotonic() < self.deadline and self.count() < self.max_requests:
            if kind == "idle":
                self.stopping.wait(pauses.uniform(0.0, 0.6))  # load shape: a keep-alive connection left idle
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                conn.request("GET", "/load", headers=headers)
                resp = conn.getresponse()
                resp.read()
                outcome = resp.getheader("X-Backend", "") if resp.status == 200 else f"!{resp.status}"
                if resp.will_close or kind == "fresh":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"!{type(exc).__name__}" + (f" ({kind})" if kind != "tight" else "")
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


# -- the control plane is closed ----------------------------------------------------------------------


def _exec_python(container: Any, code: str) -> tuple[int, str]:
    status, output = container.exec_run(["python3", "-c", code], demux=False)
    return status, output.decode(errors="replace")


REACH = """
import socket, sys
for host, port in {targets!r}:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print("REACHED", host, port)
    except OSError as exc:
        print("refused", host, port, type(exc).__name__)
"""


def test_a_backend_reaches_neither_redis_nor_the_admin(stack: Stack) -> None:
    _ready(stack)
    targets: list[tuple[str, int]] = [("redis", 6379), ("admin", 8081)]
    for service, port in (("redis", 6379), ("admin", 8081)):
        container = stack.container(service)
        container.reload()
        targets += [(net["IPAddress"], port) for net in container.attrs["NetworkSettings"]["Networks"].values()]
    status, output = _exec_python(stack.container("demo-a"), REACH.format(targets=targets))
    assert status == 0, output
    assert "REACHED" not in output, output
    assert output.count("refused") == len(targets) >= 4, output
    # The same probe from a proxy (on the control network) does reach both: the probe itself works.
    status, output = _exec_python(
        stack.containers("proxy")[0], REACH.format(targets=[("redis", 6379), ("admin", 8081)])
    )
    assert output.count("REACHED") == 2, output


def test_redis_wants_the_acl_user_and_the_admin_its_token(stack: Stack) -> None:
    _ready(stack)
    code = (  # the three replies, read until the last has come (the socket's timeout is the deadline)
        "import socket\n"
        "s = socket.create_connection(('redis', 6379), timeout=3)\n"
        "s.sendall(b'PING\\r\\nGET x\\r\\nAUTH gobalancer wrong\\r\\n')\n"
        "data = b''\n"
        "while b'WRONGPASS' not in data and (chunk := s.recv(4096)):\n"
        "    data += chunk\n"
        "print(data)\n"
    )
    status, output = _exec_python(stack.container("health"), code)
    assert status == 0, output
    assert "+PONG" in output  # the default user may ping (health checks)...
    assert "NOPERM" in output or "NOAUTH" in output  # ...and nothing else
    assert "WRONGPASS" in output
    status, body = admin_call(stack.admin_port, "PUT", "/algorithm", token="not-the-token", body={"algorithm": "p2c"})
    assert status == 401, body
    status, _ = stack.admin("GET", "/algorithm")
    assert status == 200


def test_the_docker_api_filter_refuses_a_write(stack: Stack) -> None:
    """Discovery (uid 10001, no socket) talks to the filter, which lets only its read calls through."""
    discovery = stack.container("discovery")
    code = """
import http.client, json
def call(method, path, body=None):
    h = http.client.HTTPConnection("docker-api", 2375, timeout=5)
    h.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    r = h.getresponse()
    return r.status, r.read()
print(json.dumps([call("POST", "/v1.41/volumes/create", b"{}")[0], call("DELETE", "/v1.41/containers/x")[0],
                  call("GET", "/v1.41/images/json")[0], call("GET", "/v1.41/containers/json")[0],
                  call("GET", "/_ping")[0]]))
"""
    volumes_before = {v.name for v in stack.client.volumes.list()}
    status, output = _exec_python(discovery, code)
    assert status == 0, output
    assert json.loads(output.strip().splitlines()[-1]) == [405, 405, 403, 200, 200]
    assert {v.name for v in stack.client.volumes.list()} == volumes_before  # the engine never saw the POST
    status, output = _exec_python(discovery, "import os; print(os.getuid())")
    assert output.strip() == "10001"


# -- the client's address -------------------------------------------------------------------------------


def test_the_client_address_reaches_the_backend(stack: Stack) -> None:
    """A client on the clients network: the backend's X-Forwarded-For is that client's address (carried from
    the front to the proxy in a PROXY protocol header), not the front's."""
    if not proxy_protocol_on():
        unavailable("GOBALANCER_E2E_PROXY_PROTOCOL=off: the front sends no PROXY header in this run")
    _ready(stack)
    code = (
        "import http.client, json\n"
        "c = http.client.HTTPConnection('front', 8080, timeout=5); c.connect()\n"
        "me = c.sock.getsockname()[0]\n"
        "c.request('GET', '/whoami'); body = json.loads(c.getresponse().read())\n"
        "print(json.dumps({'me': me, 'forwarded_for': body['forwarded_for']}))\n"
    )
    client = stack.client.containers.run(
        APP_IMAGE,
        ["python3", "-c", code],
        name=f"{stack.project}-client",
        detach=True,
        labels={E2E_LABEL: stack.project},
        network=stack.network("clients"),
        read_only=True,
        cap_drop=["ALL"],
    )
    try:
        assert client.wait(timeout=30)["StatusCode"] == 0, client.logs().decode(errors="replace")
        seen = json.loads(client.logs().decode().strip().splitlines()[-1])
    finally:
        client.remove(force=True)
    front_ip = stack.ip(stack.container("front"), "clients")
    assert seen["forwarded_for"] == seen["me"] != front_ip, seen


# -- scaling and replacing the proxies under load ------------------------------------------------------------


def _scale(stack: Stack, replicas: int, service: str = "proxy") -> None:
    stack.run("up", "-d", "--no-build", "--no-deps", "--no-recreate", "--scale", f"{service}={replicas}", service)


def _failures(load: Load) -> list[str]:
    return [outcome for _, outcome in list(load.results) if not outcome or outcome.startswith("!")]


def _more(load: Load, count: int, message: str) -> None:
    start = load.count()
    wait_for(lambda: load.count() >= start + count, timeout=30, message=lambda: f"{message} ({load.count() - start})")


SCALE_RUNS = int(os.environ.get("GOBALANCER_E2E_SCALE_RUNS", "1"))


def test_scaling_4_to_1_to_4_under_load_fails_no_request(stack: Stack) -> None:
    """Each stopping replica says not-ready at once, keeps serving through the front's next check, then
    drains: scale-in and scale-out under keep-alive load fail nothing (GOBALANCER_E2E_SCALE_RUNS cycles).
    `proxy-b` is scaled to 0 meanwhile, so the one replica left is the only one."""
    _ready(stack)
    _scale(stack, 4)
    wait_for(lambda: len(stack.containers("proxy")) == 4, timeout=30, message="4 proxy replicas")
    _scale(stack, 0, "proxy-b")
    report: list[tuple[int, int, int, float]] = []
    try:
        _scale_runs(stack, report)
    finally:
        print(f"scale 4->1->4 runs (run, requests, failed, scale-in seconds): {report}")
        _scale(stack, PROXY_REPLICAS, "proxy-b")
        _scale(stack, PROXY_REPLICAS)


def _scale_runs(stack: Stack, report: list[tuple[int, int, int, float]]) -> None:
    for run in range(SCALE_RUNS):
        with Load(stack.http_port, workers=2, fresh=2, idle=4, max_requests=1_000_000, max_seconds=120) as load:
            _more(load, 200, "requests before scaling in")
            started = time.monotonic()
            _scale(stack, 1)  # returns once the 3 replicas have drained and exited
            scaled_in = time.monotonic() - started
            assert len(stack.containers("proxy")) == 1
            _more(load, 300, "requests on the one replica left")
            scale_out = time.monotonic()
            _scale(stack, 4)
            wait_for(lambda: len(stack.containers("proxy")) == 4, timeout=30, message="4 replicas again")
            _more(load, 600, "requests after scaling out")
        failures = _failures(load)
        report.append((run, len(load.results), len(failures), round(scaled_in, 1)))
        when = [(round(t - started, 2), outcome) for t, outcome in list(load.results) if outcome.startswith("!")]
        assert failures == [], (
            f"run {run}: {len(failures)} of {len(load.results)} failed: {Counter(failures)}; seconds after the "
            f"scale-in began (scale-out began at {scale_out - started:.2f}): {when[:20]}\n" + stack.logs("front", 40)
        )


UPGRADE_RUNS = int(os.environ.get("GOBALANCER_E2E_UPGRADE_RUNS", "1"))


def test_plain_compose_up_with_a_new_proxy_image_fails_no_request(stack: Stack) -> None:
    """`docker-compose up -d` after the proxies' image changed (GOBALANCER_PROXY_IMAGE: a new tag), nothing
    else: Compose recreates every `proxy` replica at once while `proxy-b` serves, and `proxy-b` only once the
    new `proxy` replicas are healthy (ready), so the front always has ready replicas: no request fails, and
    none waits in the front's hold (which would hide a moment with no ready replica). Only the proxies are
    replaced. GOBALANCER_E2E_UPGRADE_RUNS runs, each to a new image."""
    _ready(stack)
    report: list[tuple[int, int, int, float, float]] = []
    try:
        for run in range(UPGRADE_RUNS):
            report.append(_upgrade(stack, run))
    finally:
        print(f"plain up -d with a new proxy image (run, requests, failed, up seconds, longest gap s): {report}")


def _longest_gap(load: Load, since: float) -> float:
    """The longest time in which no request completed (after ``since``)."""
    done = sorted(t for t, _ in list(load.results) if t > since)
    return max((b - a for a, b in itertools.pairwise(done)), default=0.0)


def _upgrade(stack: Stack, run: int) -> tuple[int, int, int, float, float]:
    tag = f"gobalancer:{stack.project}-{run}"
    image = stack.build_proxy_image(tag)
    before = {c.id for c in stack.proxies()}
    others = {c.id for c in stack.containers() if c.id not in before}
    with Load(stack.http_port, workers=2, fresh=2, idle=4, max_requests=1_000_000, max_seconds=120) as load:
        _more(load, 200, "requests before the up")
        stack.proxy_image = tag
        started = time.monotonic()
        stack.run("up", "-d", timeout=180)
        took = time.monotonic() - started
        _more(load, 300, "requests after the up")
    proxies = stack.proxies()
    assert len(proxies) == 2 * PROXY_REPLICAS, [c.name for c in proxies]
    assert not ({c.id for c in proxies} & before), "a proxy replica was not replaced"
    assert {c.image.id for c in proxies} == {image.id}
    assert {c.id for c in stack.containers() if c.id not in {p.id for p in proxies}} == others, "not only proxies"
    failures = _failures(load)
    when = [(round(t - started, 2), outcome) for t, outcome in list(load.results) if outcome.startswith("!")]
    assert failures == [], (
        f"run {run}: {len(failures)} of {len(load.results)} failed: {Counter(failures)}; seconds after the up "
        f"began (it took {took:.1f}): {when[:20]}\n" + stack.logs("front", 40)
    )
    # Held connections (no ready replica) stall every client for seconds (see the next test); here none may.
    gap = _longest_gap(load, started)
    assert gap < 3.0, f"run {run}: no request completed for {gap:.1f} s: a moment with no ready replica"
    return run, len(load.results), len(failures), round(took, 1), round(gap, 2)


def test_every_replica_replaced_at_once_is_held_not_failed(stack: Stack) -> None:
    """What Compose v2's `up -d` does with a new image (it stops the old containers of every service before it
    starts a new one), and v1's with a single proxy service: every replica stops at once, and for some seconds
    none is ready. The front holds new connections meanwhile (compose/front.lua, up to 30 s) instead of closing
    them: the requests wait, none fails. The hold lasts the old replicas' shutdown delay (5 s) plus the
    recreate and start-up, 7-13 s on a busy 2-core machine: the clients here wait up to 40 s (curl, browsers
    and hey's default wait 20 s or more)."""
    _ready(stack)
    _scale(stack, 0, "proxy-b")
    try:
        tag = f"gobalancer:{stack.project}-at-once"
        image = stack.build_proxy_image(tag)
        before = {c.id for c in stack.containers("proxy")}
        with Load(
            stack.http_port, workers=2, fresh=2, idle=4, max_requests=1_000_000, max_seconds=120, timeout=40
        ) as load:
            _more(load, 200, "requests before the recreate")
            stack.proxy_image = tag
            started = time.monotonic()
            stack.run("up", "-d", "--no-deps", "proxy", timeout=180)  # both replicas of `proxy` at once
            took = time.monotonic() - started
            _more(load, 300, "requests after the recreate")
        after = stack.containers("proxy")
        assert len(after) == PROXY_REPLICAS and not ({c.id for c in after} & before)
        assert {c.image.id for c in after} == {image.id}
        failures = _failures(load)
        when = [(round(t - started, 2), outcome) for t, outcome in list(load.results) if outcome.startswith("!")]
        assert failures == [], (
            f"{len(failures)} of {len(load.results)} failed: {Counter(failures)}; seconds after the up began (it "
            f"took {took:.1f}): {when[:20]}\n" + stack.logs("front", 60) + stack.logs("proxy", 20)
        )
        # No replica was ready for a while (so the hold was what kept the requests): no request completed.
        gap = _longest_gap(load, started)
        assert gap > 3.0, f"no gap in the completions ({gap:.2f} s): the replicas overlapped, nothing was held"
        print(
            f"every replica at once under load: {len(load.results)} requests, 0 failed, longest hold {gap:.1f} s, "
            f"up took {took:.1f} s"
        )
    finally:
        _scale(stack, PROXY_REPLICAS, "proxy-b")


def test_rollout_replaces_every_proxy_under_load_fails_no_request(stack: Stack) -> None:
    """scripts/compose-rollout: for each proxy service, a new replica per old one, ready first, then the old ones
    stop (never fewer ready replicas than before)."""
    _ready(stack)
    before = {c.id for c in stack.proxies()}
    env = dict(stack.env)
    with Load(stack.http_port, workers=2, fresh=2, idle=4, max_requests=1_000_000, max_seconds=120) as load:
        _more(load, 200, "requests before the rollout")
        done = subprocess.run(
            [str(ROOT / "scripts" / "compose-rollout"), "-p", stack.project, *stack.files],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        _more(load, 300, "requests after the rollout")
    after = {c.id for c in stack.proxies()}
    assert len(after) == len(before) == 2 * PROXY_REPLICAS and not (after & before), (before, after)
    failures = _failures(load)
    assert failures == [], f"{len(failures)} of {len(load.results)} failed: {Counter(failures)}"
    print(f"rollout under load: {len(load.results)} requests, 0 failed")


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
    volumes = sorted(v.name for v in docker_client.volumes.list(filters={"label": project}))
    assert volumes == [f"{stack.project}_redis-data", f"{stack.project}_secrets"], volumes
    stack.run("down", "--volumes", timeout=120)
    assert docker_client.volumes.list(filters={"label": project}) == []
