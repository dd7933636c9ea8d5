"""The real suite on loopback, one process per service, each of which a test can kill or restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared.processes import die_with_parent, stop_process
from shared.redis_server import free_port, wait_for_port
from tests.helpers import service_env

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            cwd=ROOT,
        )
        handle.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no lease release, no deregistration."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        return stop_process(self.process, timeout)

    def rss_kb(self) -> int:
        """VmRSS of the process (kB), from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@dataclass
class Suite:
    """Writes a config for fast failure detection and starts services on demand.

    Each proxy replica may get its own port (``start_proxy(name)``), so a test can tell the replicas
    apart; replica ids are set through ``GOBALANCER_REPLICA_ID`` so the store's view of them is readable.
    """

    workdir: Path
    redis_url: str
    backends: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    proxy_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    namespace: str = "reliability"
    proxy_ports: dict[str, int] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yaml"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def config_data(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "listen_address": f"127.0.0.1:{self.proxy_port}",
            "backends": [{"address": a, "weight": 1} for a in self.backends],
            "health_check": {
                "interval_sec": 0.2,
                "timeout_sec": 0.2,
                "rise": 2,
                "fall": 2,
                "jitter": 0.0,
                "lease_ttl_sec": 1.5,
            },
            "redis": {
                "url": self.redis_url,
                "namespace": self.namespace,
                "heartbeat_sec": 0.25,
                "replica_ttl_sec": 1.5,
            },
            "discovery": {"type": "static", "lease_ttl_sec": 1.5, "file_poll_sec": 0.2},
            "admin": {"listen_address": f"127.0.0.1:{self.admin_port}"},
            "timeout": {"connect_timeout": 0.5, "drain_sec": 2, "header_read_sec": 2},
            "logging": {"format": "json"},
            # Several replicas of one service run side by side: no fixed metrics ports.
            "metrics": {"proxy_listen_address": "", "health_listen_address": "", "discovery_listen_address": ""},
        }
        for dotted, value in self.overrides.items():
            node = config
            parts = dotted.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        return config

    def write_config(self) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.config_data()))
        return self.config_path

    def env(self) -> dict[str, str]:
        return service_env()

    def start(self, service: str, name: str | None = None, extra_env: dict[str, str] | None = None) -> Proc:
        if not self.config_path.exists():
            self.write_config()
        name = name or service
        proc = Proc(
            name,
            [sys.executable, "-m", f"services.{service}", "--config", str(self.config_path)],
            {**self.env(), "GOBALANCER_REPLICA_ID": name, **(extra_env or {})},
            self.workdir / f"{name}.log",
        ).start()
        self.procs.append(proc)
        return proc

    def start_proxy(self, name: str, port: int | None = None, extra_env: dict[str, str] | None = None) -> Proc:
        """A proxy replica on its own port (remembered in ``proxy_ports``)."""
        port = port or self.proxy_ports.get(name) or free_port()
        self.proxy_ports[name] = port
        env = {"GOBALANCER_LISTEN_ADDRESS": f"127.0.0.1:{port}", **(extra_env or {})}
        return self.start("proxy", name, env)

    def start_backend(self, name: str, port: int | None = None) -> Proc:
        return self._start_backend(name, "shared.demo_backend", port)

    def start_slow_backend(self, name: str, port: int | None = None) -> Proc:
        """A backend that answers ``GET /?delay=S`` after S seconds (holds requests in flight)."""
        return self._start_backend(name, "tests.reliability.backends", port)

    def _start_backend(self, name: str, module: str, port: int | None) -> Proc:
        port = port or free_port()
        address = f"127.0.0.1:{port}"
        proc = Proc(
            f"backend-{name}",
            [sys.executable, "-m", module, "--listen", address, "--name", name],
            self.env(),
            self.workdir / f"backend-{name}.log",
        ).start()
        self.procs.append(proc)
        assert wait_for_port("127.0.0.1", port, 10), f"backend {name} did not start"
        return proc

    def wait_proxy(self, timeout: float = 15.0, port: int | None = None) -> None:
        port = port or self.proxy_port
        assert wait_for_port("127.0.0.1", port, timeout), f"proxy did not listen on {port}\n{self.logs()}"

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.log.read_text(errors='replace')[-tail:]}" for p in self.procs if p.log.exists()
        )

    def all_log_text(self) -> str:
        return "\n".join(p.log.read_text(errors="replace") for p in self.procs if p.log.exists())


async def await_port(port: int, timeout: float = 15.0) -> None:
    """Like ``wait_for_port`` but without blocking the event loop (a load may be running)."""
    ok = await asyncio.to_thread(wait_for_port, "127.0.0.1", port, timeout)
    assert ok, f"nothing listens on {port} after {timeout}s"
