"""The backend deny list (issue 15 item 5): the suite's own listeners and configured networks."""

from __future__ import annotations

import pytest

from shared.config import Config
from shared.denylist import BackendDenyList


def deny(**changes: object) -> BackendDenyList:
    config = Config()
    config.redis.url = "redis://:pw@127.0.0.1:6390/0"
    config.admin.listen_address = "127.0.0.1:8081"
    config.listen_address = ":8080"
    config.proxy.workers = 2
    config.backend_deny.networks = ["169.254.169.254/32", "fd00::/8"]
    for key, value in changes.items():
        setattr(config.backend_deny, key, value)
    return BackendDenyList.from_config(config)


@pytest.mark.parametrize(
    ("address", "setting"),
    [
        ("127.0.0.1:8081", "admin.listen_address"),
        ("localhost:8081", "admin.listen_address"),
        ("0.0.0.0:8081", "admin.listen_address"),
        ("[::ffff:127.0.0.1]:8081", "admin.listen_address"),
        ("127.0.0.1:6390", "redis.url"),
        ("127.0.0.1:8080", "listen_address"),  # all interfaces: loopback reaches it
        ("[::1]:8080", "listen_address"),
        ("127.0.0.1:9100", "metrics.proxy_listen_address"),
        ("127.0.0.1:9101", "metrics.proxy_listen_address"),  # worker 1
        ("127.0.0.1:9201", "metrics.health_listen_address"),
        ("169.254.169.254:80", "backend_deny.networks[0]"),
        ("[fd00::5]:80", "backend_deny.networks[1]"),
    ],
)
def test_refused_naming_the_setting(address: str, setting: str) -> None:
    reason = deny().reason(address)
    assert reason is not None and setting in reason, reason


@pytest.mark.parametrize(
    "address", ["127.0.0.1:8082", "127.0.0.1:9102", "10.0.0.1:8081", "10.0.0.1:6390", "example.com:8081", "[::1]:6390"]
)
def test_other_addresses_pass(address: str) -> None:
    assert deny().reason(address) is None


def test_own_listeners_can_be_allowed() -> None:
    assert deny(own_listeners=False).reason("127.0.0.1:8081") is None
    assert deny(own_listeners=False).reason("169.254.169.254:80") is not None


def test_a_redis_known_by_name_is_refused_by_that_name() -> None:
    config = Config()
    config.redis.url = "redis://redis:6379/0"
    assert "redis.url" in (BackendDenyList.from_config(config).reason("Redis:6379") or "")
    config.redis.url = "redis+sentinel://s1:26379,s2:26380/mymaster"
    assert "redis.url" in (BackendDenyList.from_config(config).reason("s2:26380") or "")


def test_live_replicas_listeners_are_refused_too() -> None:
    """A proxy started on another port (an environment override) is known from its registration."""
    from shared.denylist import replica_listeners
    from shared.models import ReplicaInfo

    replicas = [
        ReplicaInfo(
            id="proxy-7",
            service="proxy",
            started_at=0,
            heartbeat_at=0,
            listen="127.0.0.1:18080",
            metrics="127.0.0.1:19100",
        ),
        ReplicaInfo(id="health-1", service="health", started_at=0, heartbeat_at=0, listen="not an address"),
    ]
    live = replica_listeners(replicas)
    assert "proxy replica proxy-7's listen address" in (deny().reason("127.0.0.1:18080", live) or "")
    assert "metrics address" in (deny().reason("localhost:19100", live) or "")
    assert deny().reason("127.0.0.1:18080") is None
    assert deny(own_listeners=False).reason("127.0.0.1:18080", live) is None
