"""`gobalancer up`'s line about the proxies counts replicas and their worker processes (issue 17.7)."""

from __future__ import annotations

import pytest

from shared.config import load_config
from shared.launcher import proxy_banner


@pytest.mark.parametrize(
    ("proxies", "workers", "expected"),
    [
        (1, 1, "(1 replica, http mode)"),
        (2, 1, "(2 replicas, http mode)"),
        (1, 2, "(1 replica x 2 workers, http mode)"),
        (3, 4, "(3 replicas x 4 workers, http mode)"),
    ],
)
def test_replicas_and_workers(proxies: int, workers: int, expected: str) -> None:
    config = load_config(None, {"GOBALANCER_PROXY_WORKERS": str(workers)})
    assert proxy_banner(config, proxies) == f"proxy      http://127.0.0.1:8080 {expected}"


def test_tls_and_tcp() -> None:
    env = {
        "GOBALANCER_MODE": "tcp",
        "GOBALANCER_LISTEN_ADDRESS": "10.0.0.1:443",
        "GOBALANCER_PROXY_TLS": "{cert_file: c.pem, key_file: k.pem}",
    }
    assert proxy_banner(load_config(None, env), 1) == "proxy      https://10.0.0.1:443 (1 replica, tcp mode)"
