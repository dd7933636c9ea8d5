"""Redis URLs the services accept: password, ACL user, TLS (rediss://) and Sentinel."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, ResponseError

from shared.models import Backend
from shared.redis_server import RedisServer, free_port, wait_for_port
from shared.store import Store
from shared.store.connect import parse_sentinel_url


async def _roundtrip(url: str, namespace: str) -> None:
    store = Store.from_url(url, namespace)
    try:
        await store.create_backend(Backend(address="a:1", weight=2))
        snap = await store.snapshot()
        assert snap.backends["a:1"].backend.weight == 2
    finally:
        await store.close()


async def test_password(namespace: str) -> None:
    with RedisServer(password="pa ss/word") as server:
        url = f"redis://:{'pa%20ss%2Fword'}@127.0.0.1:{server.port}/0"
        await _roundtrip(url, namespace)
        bad = Store.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0", namespace)
        with pytest.raises((AuthenticationError, ResponseError)):
            await bad.snapshot()
        await bad.close()


async def test_acl_user(namespace: str) -> None:
    with RedisServer() as server:
        subprocess.run(
            ["redis-cli", "-p", str(server.port), "ACL", "SETUSER", "gb", "on", ">gb-secret", "~*", "&*", "+@all"],
            check=True,
            capture_output=True,
        )
        await _roundtrip(f"redis://gb:gb-secret@127.0.0.1:{server.port}/0", namespace)
        bad = Store.from_url(f"redis://gb:nope@127.0.0.1:{server.port}/0", namespace)
        with pytest.raises((AuthenticationError, ResponseError)):
            await bad.snapshot()
        await bad.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    csr = tmp_path / "server.csr"
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(files["key"]), "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
        "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(files["cert"]))  # fmt: skip
    yield files


async def test_tls(tls_files: dict[str, Path], namespace: str) -> None:
    tls_port = free_port()
    extra = (
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(tls_files["cert"]),
        "--tls-key-file", str(tls_files["key"]),
        "--tls-ca-cert-file", str(tls_files["ca"]),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    with RedisServer(extra_args=extra):
        assert wait_for_port("127.0.0.1", tls_port, 5)
        await _roundtrip(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={tls_files['ca']}", namespace)


def test_sentinel_url_parsing() -> None:
    sentinels, master, kwargs = parse_sentinel_url("redis+sentinel://u:p%40ss@h1:26379,[::1]:26380,h3/mymaster/2")
    assert sentinels == [("h1", 26379), ("::1", 26380), ("h3", 26379)]
    assert master == "mymaster"
    assert kwargs == {"username": "u", "password": "p@ss", "db": 2}
    with pytest.raises(ValueError, match="master name"):
        parse_sentinel_url("redis+sentinel://h1:26379")


async def test_sentinel(tmp_path: Path, namespace: str) -> None:
    with RedisServer() as master:
        port = free_port()
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
        )
        sentinel = subprocess.Popen(["redis-sentinel", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_for_port("127.0.0.1", port, 10)
            await _roundtrip(f"redis+sentinel://127.0.0.1:{port}/mymaster", namespace)
        finally:
            sentinel.terminate()
            sentinel.wait(10)
