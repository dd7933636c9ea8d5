"""Each probe type against real listeners on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.health.probes import Prober
from services.health.state import Verdict
from shared.config import HealthCheckConfig
from tests.conftest import unavailable
from tests.integration.health.backends import HttpBackend


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def backend() -> AsyncIterator[HttpBackend]:
    b = await HttpBackend().start()
    yield b
    await b.die()


async def probe(config: HealthCheckConfig, address: str) -> Verdict:
    prober = Prober(config)
    return await prober.probe(prober.target(address))


async def test_tcp_open_and_refused(backend: HttpBackend) -> None:
    config = HealthCheckConfig(type="tcp")
    assert await probe(config, backend.address) == Verdict(True, "connected")
    assert await probe(config, f"127.0.0.1:{closed_port()}") == Verdict(False, "connection refused")


async def test_http_status_body_and_host_header(backend: HttpBackend) -> None:
    backend.body = b'{"status":"ok"}'
    config = HealthCheckConfig(type="http", path="/healthz", host="svc.internal", expect_body='"ok"')
    assert await probe(config, backend.address) == Verdict(True, "HTTP 200, body matched")
    head = backend.requests[-1].decode()
    assert head.startswith("GET /healthz HTTP/1.1\r\n")
    assert "\r\nHost: svc.internal\r\n" in head

    backend.set_mode("error")
    assert await probe(config, backend.address) == Verdict(False, "HTTP 500")

    backend.set_mode("close")  # accept, then close unread (the kernel may answer with a reset)
    verdict = await probe(config, backend.address)
    assert not verdict.ok and verdict.reason in ("connection closed after no response", "connection reset")


async def test_http_default_host_is_the_backend_address_and_method_is_configurable(backend: HttpBackend) -> None:
    assert (await probe(HealthCheckConfig(type="http", method="HEAD"), backend.address)).ok
    assert backend.requests[-1].decode().startswith("HEAD / HTTP/1.1\r\n")
    assert f"\r\nHost: {backend.address}\r\n" in backend.requests[-1].decode()


async def test_a_hung_backend_times_out_and_its_connection_is_released(backend: HttpBackend) -> None:
    backend.set_mode("hang")
    started = time.monotonic()
    verdict = await probe(HealthCheckConfig(type="http", timeout_sec=0.2), backend.address)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert verdict == Verdict(False, "timeout after 0.2s")
    assert 0.19 <= elapsed < 0.5
    # The prober reset its side: the backend sees the connection go away.
    for _ in range(100):
        if not backend.connections:
            break
        await asyncio.sleep(0.01)
    assert not backend.connections


async def test_tcp_probe_leaves_no_time_wait_socket(backend: HttpBackend) -> None:
    """Probes close with a reset; thousands a minute must not pile up TIME_WAIT sockets."""
    config = HealthCheckConfig(type="tcp")
    for _ in range(20):
        assert (await probe(config, backend.address)).ok
    if shutil.which("ss") is None:
        unavailable("ss is not installed (iproute2; `make pytest` installs it)")
    out = subprocess.run(
        ["ss", "-tan", "state", "time-wait", f"( dport = :{backend.port} )"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert str(backend.port) not in out.stdout


async def test_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    backend = await HttpBackend(ssl_context=ctx).start()
    try:
        assert await probe(HealthCheckConfig(type="https"), backend.address) == Verdict(True, "HTTP 200")
        verified = await probe(HealthCheckConfig(type="https", tls_verify=True), backend.address)
        assert not verified.ok and verified.reason.startswith("TLS")
        # Plain HTTP against the TLS port fails too (it is not an HTTP answer).
        assert not (await probe(HealthCheckConfig(type="http", timeout_sec=0.5), backend.address)).ok  # type: ignore[arg-type]
    finally:
        await backend.die()
