"""What a probe of one backend is prepared with (no I/O)."""

from __future__ import annotations

import socket

import pytest

from services.health.probes import Prober
from shared.config import HealthCheckConfig


def test_tcp_targets_skip_the_resolver_for_ip_literals() -> None:
    prober = Prober(HealthCheckConfig(type="tcp"))
    assert prober.target("10.0.0.5:80").family == socket.AF_INET
    assert prober.target("[::1]:8080").family == socket.AF_INET6
    named = prober.target("api.internal:80")
    assert (named.host, named.port, named.family) == ("api.internal", 80, 0)
    assert named.request == b""


def test_http_target_request_uses_path_method_and_host() -> None:
    prober = Prober(HealthCheckConfig(type="http", path="/ready", method="HEAD", host="svc.example"))
    target = prober.target("10.0.0.5:8080")
    assert target.request.startswith(b"HEAD /ready HTTP/1.1\r\nHost: svc.example\r\n")
    assert target.server_hostname is None  # no TLS
    default = Prober(HealthCheckConfig(type="http")).target("[::1]:8080")
    assert b"\r\nHost: [::1]:8080\r\n" in default.request


@pytest.mark.parametrize(
    ("host", "address", "sni"),
    [
        ("", "api.internal:443", "api.internal"),
        ("svc.example", "10.0.0.5:443", "svc.example"),
        ("svc.example:8443", "10.0.0.5:443", "svc.example"),
        ("[::1]:8443", "10.0.0.5:443", "::1"),
    ],
)
def test_https_sni_comes_from_the_host_setting_or_the_backend(host: str, address: str, sni: str) -> None:
    assert Prober(HealthCheckConfig(type="https", host=host)).target(address).server_hostname == sni


def test_a_malformed_address_is_refused() -> None:
    with pytest.raises(ValueError):
        Prober(HealthCheckConfig()).target("no-port")
