"""`python -m services.admin` as a real process: serves, stops on SIGTERM with a stream open, refuses open binds."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from shared.redis_server import free_port
from tests.helpers import eventually, service_env


def test_refuses_non_loopback_without_token() -> None:
    env = service_env(GOBALANCER_REDIS_URL="redis://127.0.0.1:1/0", GOBALANCER_ADMIN_LISTEN_ADDRESS=":18099")
    proc = subprocess.run(
        [sys.executable, "-m", "services.admin"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "refusing" in line]
    assert len(lines) == 1 and "admin.token" in lines[0] and "allow_insecure" in lines[0]


async def test_serves_and_stops_on_sigterm_with_a_stream_open(redis_url: str, namespace: str) -> None:
    port = free_port()
    env = service_env(
        GOBALANCER_REDIS_URL=redis_url,
        GOBALANCER_REDIS_NAMESPACE=namespace,
        GOBALANCER_ADMIN_LISTEN_ADDRESS=f"127.0.0.1:{port}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.admin"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(healthy, timeout=20, message="admin service did not become healthy")
            assert (await client.post("/backends", json={"address": "10.0.0.1:80"})).status_code == 201
            async with client.stream("GET", "/events") as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("event: snapshot"):
                        break
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=15)
        assert code == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
