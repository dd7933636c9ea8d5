"""`gobalancer up`: the whole suite on one machine, as child processes.

Starts a private redis-server when no Redis URL is configured, demo backends when asked to (or
when no backend is configured at all), then the proxy replicas, admin, discovery and health.
Ctrl-C or SIGTERM stops everything; children also die with the launcher (PR_SET_PDEATHSIG), so
even a SIGKILLed launcher leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from shared.addresses import with_port_offset
from shared.config import Config, redact_url
from shared.processes import die_with_parent
from shared.redis_server import RedisServer, free_port, wait_for_port

SERVICES = ("admin", "discovery", "health")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def proxy_banner(config: Config, proxies: int) -> str:
    """The start-up line about the proxies: where, how many replicas, how many worker processes each."""
    listen = config.listen_address
    shown = f"127.0.0.1{listen}" if listen.startswith(":") else listen
    scheme = "https" if config.proxy.tls.enabled else "http"
    workers = config.proxy.workers
    processes = (
        f"{_count(proxies, 'replica')} x {_count(workers, 'worker')}" if workers > 1 else _count(proxies, "replica")
    )
    return f"proxy      {scheme}://{shown} ({processes}, {config.mode} mode)"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class Launcher:
    config: Config
    config_path: str | None
    proxies: int = 1
    out: object = field(default_factory=lambda: sys.stdout)
    children: list[Child] = field(default_factory=list)
    redis: RedisServer | None = None
    demo_addresses: list[str] = field(default_factory=list)
    _stopping: bool = False
    stop_requested: bool = False

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)  # type: ignore[call-overload]

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        process = subprocess.Popen(args, env=env, preexec_fn=die_with_parent, start_new_session=True)
        child = Child(name, process)
        self.children.append(child)
        return child

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.redis is not None:
            env["GOBALANCER_REDIS_URL"] = self.redis.url
        if self.demo_addresses and not self.config.backends:
            env["GOBALANCER_BACKENDS"] = json.dumps([{"address": a, "weight": 1} for a in self.demo_addresses])
        return env

    def _plan_demo(self) -> list[str]:
        static = self.config.discovery.type == "static"
        if static and not self.config.backends:
            return [f"127.0.0.1:{free_port()}" for _ in range(2)]
        if self.config.demo:  # every pool's loopback backends (the named pools' too: routes lead there)
            addresses = [b.address for pool in self.config.pool_configs().values() for b in pool.backends]
            return [a for a in dict.fromkeys(addresses) if a.startswith(("127.", "localhost:"))]
        return []

    def start(self) -> None:
        if not self.config.redis.url:
            self.redis = RedisServer(persist=True).start()
            self._say(f"redis      {self.redis.url} (private, stopped with the suite)")
        else:
            self._say(f"redis      {redact_url(self.config.redis.url)}")
        self.demo_addresses = self._plan_demo()
        env = self._environment()
        for i, address in enumerate(self.demo_addresses):
            name = chr(ord("A") + i) if i < 26 else str(i)
            self._spawn(
                f"demo-{name}",
                [sys.executable, "-m", "shared.demo_backend", "--listen", address, "--name", name],
                env,
            )
            self._say(f"demo       backend {name} on http://{address}")
        for address in self.demo_addresses:
            host, _, port = address.rpartition(":")
            wait_for_port(host, int(port), 10.0)
        config_args = ["--config", self.config_path] if self.config_path else []
        for name in SERVICES:
            self._spawn(name, [sys.executable, "-m", f"services.{name}", *config_args], env)
        metrics = self.config.metrics.proxy_listen_address
        for i in range(self.proxies):
            proxy_env = env
            if metrics and i:
                # Replicas on one machine: each serves /metrics on its own ports (a worker per port).
                offset = i * self.config.proxy.workers
                proxy_env = {**env, "GOBALANCER_METRICS_PROXY_LISTEN_ADDRESS": with_port_offset(metrics, offset)}
            self._spawn(f"proxy-{i + 1}", [sys.executable, "-m", "services.proxy", *config_args], proxy_env)
        self._say(proxy_banner(self.config, self.proxies))
        self._say(f"admin      http://{self.config.admin.listen_address}")
        self._say("Ctrl-C stops everything.")

    def stop(self, timeout: float = 15.0) -> None:
        if self._stopping:
            return
        self._stopping = True
        for child in reversed(self.children):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self.redis is not None:
            self.redis.cleanup()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True

    def wait(self) -> int:
        """Block until a signal or until a child exits on its own; return the exit code."""
        try:
            while not self.stop_requested:
                for child in self.children:
                    code = child.process.poll()
                    if code is not None:
                        self._say(f"{child.name} exited with code {code}; stopping the suite")
                        return code or 1
                time.sleep(0.2)
            self._say("stopping...")
            return 0
        finally:
            self.stop()


def run_up(config: Config, config_path: str | None, proxies: int, *, exit_with_parent: int | None = None) -> int:
    """Run the suite until a signal. ``exit_with_parent``: also stop when the parent process exits
    (0: whatever process is the parent now; a PID: the parent it must be, so a parent that already
    died while this process was starting is noticed too)."""
    if config_path is not None:
        config_path = str(Path(config_path).resolve())
    launcher = Launcher(config, config_path, proxies)
    # Handlers first: a signal that arrives while the suite is starting still stops it cleanly.
    signal.signal(signal.SIGTERM, launcher.on_signal)
    signal.signal(signal.SIGINT, launcher.on_signal)
    if exit_with_parent is not None:
        parent = exit_with_parent or os.getppid()
        die_with_parent()  # SIGTERM when the parent exits: the handler above stops the suite
        if os.getppid() != parent:  # it exited before that took effect
            print(f"gobalancer up: the process that started it ({parent}) has exited; not starting", file=sys.stderr)
            return 0
    try:
        launcher.start()
    except BaseException:
        launcher.stop()
        raise
    return launcher.wait()
