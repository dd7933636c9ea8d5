"""The image's HEALTHCHECK (also usable as a Kubernetes exec probe): is this container's service alive?

The service is read from the container's processes (one service per container; PID 1 may be an init such
as docker-init/tini, so the first process running a known module is used):
- ``services.proxy``: the proxy's listener accepts a TCP connection;
- ``services.admin``: ``GET /health`` on the admin listener answers 200;
- ``services.discovery`` / ``services.health``: Redis holds a live heartbeat of a replica on this host;
- ``shared.demo_backend --listen H:P``: the demo backend accepts a TCP connection.
Exit 0 = healthy, 1 = unhealthy (with one line on stderr saying why). Bounded: every step has a timeout.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import Config

TIMEOUT = 3.0


KNOWN = ("services.proxy", "services.admin", "services.discovery", "services.health", "shared.demo_backend")


def _read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def _cmdline() -> list[str]:
    """The command line of the lowest-numbered process that runs one of the known modules."""
    pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    for pid in pids:
        if pid == os.getpid():
            continue
        argv = _read_cmdline(pid)
        if _module(argv) in KNOWN:
            return argv
    return _read_cmdline(1)


def _module(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def _port_of(address: str, default: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, int(port or default)


def _tcp(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=TIMEOUT):
        pass


def _config() -> Config:
    from shared.config import load_config

    return load_config(os.environ.get("GOBALANCER_CONFIG") or None)


async def _heartbeat(service: str) -> None:
    from shared.store import Store

    config = _config()
    store = Store.from_url(config.redis.url, config.redis.namespace)
    try:
        replicas = await asyncio.wait_for(store.replicas(service), TIMEOUT)
    finally:
        await store.close()
    host = socket.gethostname()
    if not any(r.host == host for r in replicas):
        raise RuntimeError(f"no live {service} replica of host {host} in Redis")


def check(argv: list[str]) -> None:
    module = _module(argv)
    if module == "services.proxy":
        _tcp(*_port_of(_config().listen_address, 8080))
    elif module == "services.admin":
        host, port = _port_of(_config().admin.listen_address, 8081)
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        try:
            conn.request("GET", "/health")
            status = conn.getresponse().status
        finally:
            conn.close()
        if status != 200:
            raise RuntimeError(f"GET /health answered {status}")
    elif module in ("services.discovery", "services.health"):
        asyncio.run(_heartbeat(module.split(".")[1]))
    elif module == "shared.demo_backend":
        listen = argv[argv.index("--listen") + 1] if "--listen" in argv else ":80"
        _tcp(*_port_of(listen, 80))
    else:
        raise RuntimeError(f"no GoBalancer service found (PID 1 runs {' '.join(_read_cmdline(1)) or '?'})")


def main() -> int:
    try:
        check(_cmdline())
    except Exception as exc:  # any failure is "unhealthy", said in one line
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
