"""The health_check settings the health service reads (the lease TTL was added for it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_config


def test_lease_ttl_defaults_and_parses_durations(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("health_check: {lease_ttl_sec: 1500ms, retries: 4}\n")
    config = load_config(path, environ={})
    assert config.health_check.lease_ttl_sec == 1.5
    assert config.health_check.fall == 4  # the original's `retries` is the fall threshold
    assert load_config(None, environ={}).health_check.lease_ttl_sec == 5.0


def test_lease_ttl_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("health_check: {lease_ttl_sec: 0}\n")
    with pytest.raises(ConfigError, match=r"health_check\.lease_ttl_sec: must be > 0"):
        load_config(path, environ={})


def test_lease_ttl_from_the_environment() -> None:
    config = load_config(None, environ={"GOBALANCER_HEALTH_CHECK_LEASE_TTL_SEC": "2s"})
    assert config.health_check.lease_ttl_sec == 2.0
