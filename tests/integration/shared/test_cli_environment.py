"""With the CLI's variables exported, `gobalancer check-config` and a service still start (issue 17.2)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from shared.processes import stop_process
from shared.store import Store
from tests.helpers import eventually, service_env

CLI_VARS = {"GOBALANCER_ADMIN_URL": "http://127.0.0.1:8081", "GOBALANCER_ADMIN_TOKEN": "tok-from-cli"}


def test_check_config_with_the_cli_variables_exported(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("backends: [{address: '127.0.0.1:9001'}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=service_env(**CLI_VARS),
    )
    assert result.returncode == 0, result.stderr
    assert "token: '***'" in result.stdout  # GOBALANCER_ADMIN_TOKEN is admin.token (redacted)


async def test_a_service_starts_with_the_cli_variables_exported(redis_url: str, namespace: str) -> None:
    env = service_env(
        **CLI_VARS,
        GOBALANCER_REDIS_URL=redis_url,
        GOBALANCER_REDIS_NAMESPACE=namespace,
        GOBALANCER_METRICS_HEALTH_LISTEN_ADDRESS="",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "services.health"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    store = Store.from_url(redis_url, namespace)
    try:

        async def registered() -> bool:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            return bool(await store.replicas("health"))

        await eventually(registered, timeout=20, message="the health service registered")
    finally:
        code = await asyncio.to_thread(stop_process, process)
        await store.close()
    assert code == 0
