"""/metrics of the health and discovery services, run as processes against a real Redis."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from shared.models import Backend as StoredBackend
from shared.processes import stop_process
from shared.redis_server import free_port
from shared.store import Store
from tests.helpers import eventually, service_env
from tests.integration.observability.scrape import Samples, scrape
from tests.integration.proxy.backends import Backend, Backends

ROOT = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def service(name: str, config: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"services.{name}", "--config", str(config)],
        cwd=ROOT,
        env=service_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        stop_process(proc)


def redis_section(url: str, namespace: str) -> str:
    return f"redis:\n  url: {url}\n  namespace: {namespace}\n  heartbeat_sec: 0.2\n  replica_ttl_sec: 2\n"


async def test_health_metrics_served(
    tmp_path: Path, backends: Backends, redis_url: str, namespace: str, store: Store
) -> None:
    b = await backends.add(Backend())
    await store.create_backend(StoredBackend(address=b.address))
    metrics = f"127.0.0.1:{free_port()}"
    config = tmp_path / "health.yaml"
    config.write_text(
        redis_section(redis_url, namespace)
        + f"metrics:\n  health_listen_address: {metrics}\nhealth_check:\n  interval_sec: 0.1\n"
    )
    with service("health", config):

        async def probed() -> Samples | None:
            with contextlib.suppress(OSError):
                s = await scrape(metrics)
                key = ("gobalancer_health_probe_results_total", (("backend", b.address), ("result", "pass")))
                return s if s.get(key, 0) >= 1 else None
            return None

        samples = await eventually(probed, timeout=15, message="health probes counted")
        assert samples[("gobalancer_health_leader", ())] == 1

        async def registered() -> bool:
            return [r.metrics for r in await store.replicas("health")] == [metrics]

        await eventually(registered, message="health replica registered with its metrics address")


async def test_discovery_metrics_served(tmp_path: Path, redis_url: str, namespace: str, store: Store) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    config = tmp_path / "discovery.yaml"
    config.write_text(
        redis_section(redis_url, namespace)
        + f"metrics:\n  discovery_listen_address: {metrics}\n"
        + "discovery:\n  lease_ttl_sec: 1\n"
        + "backends:\n"
        + "".join(f"  - address: {a}\n" for a in addresses)
    )
    with service("discovery", config):

        async def reconciled() -> Samples | None:
            with contextlib.suppress(OSError):
                s = await scrape(metrics)
                key = ("gobalancer_discovery_changes_total", (("change", "added"), ("origin", "static")))
                return s if s.get(key) == 2 else None
            return None

        samples = await eventually(reconciled, timeout=15, message="discovery changes counted")
        assert samples[("gobalancer_discovery_leader", ())] == 1
        assert samples[("gobalancer_discovery_source_up", (("origin", "static"),))] == 1
        assert samples[("gobalancer_discovery_desired_backends", ())] == 2
        assert samples[("gobalancer_discovery_reconcile_errors_total", (("origin", "static"),))] == 0
        assert sorted(v.address for v in await store.list_backends()) == sorted(addresses)
        # one removed from the file: counted as removed once the reconcile ran
        config.write_text(config.read_text().replace(f"  - address: {addresses[1]}\n", ""))

        async def removed() -> bool:
            with contextlib.suppress(OSError):
                s = await scrape(metrics)
                return s.get(("gobalancer_discovery_changes_total", (("change", "removed"), ("origin", "static")))) == 1
            return False

        await eventually(removed, timeout=15, message="removal counted")

        async def registered() -> bool:
            return [r.metrics for r in await store.replicas("discovery")] == [metrics]

        await eventually(registered, message="discovery replica registered with its metrics address")
