"""One duration type: every duration setting parses the same way, and the positive ones refuse 0 by their path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import Config, ConfigError, PositiveSeconds, Seconds, load_config
from shared.config.durations import is_positive
from shared.config.schema import strip_annotated, struct_fields


def durations(tp: Any = Config, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], bool]]:
    """Every duration setting's path and whether it must be > 0."""
    out: list[tuple[tuple[str, ...], bool]] = []
    for name, hint in (struct_fields(tp) or {}).items():
        if struct_fields(hint) is not None:
            out += durations(strip_annotated(hint), (*prefix, name))
        elif strip_annotated(hint) is Seconds:
            out.append(((*prefix, name), is_positive(hint)))
    return out


DURATIONS = durations()
POSITIVE = [path for path, positive in DURATIONS if positive]
# The durations 0 is meaningful for (off, no delay, no decay).
ZERO_ALLOWED = {
    ("timeout", "drain_sec"),
    ("proxy", "shutdown_delay_sec"),
    ("balancing", "slow_start_sec"),
    ("balancing", "ewma_decay_sec"),
}


def nested(path: tuple[str, ...], value: object) -> dict[str, Any]:
    data: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        data = {part: data}
    return data


def load(tmp_path: Path, data: dict[str, Any]) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, {})


def test_the_schema_declares_its_durations() -> None:
    paths = {path for path, _ in DURATIONS}
    assert ("health_check", "interval_sec") in paths and ("discovery", "docker", "resync_sec") in paths
    assert len(POSITIVE) == 14
    # These have their own rule against another duration (which makes them > 0 as well).
    relative = {
        ("redis", "counts_sync_sec"),
        ("redis", "replica_ttl_sec"),
        ("balancing", "outlier", "max_ejection_sec"),
    }
    assert {path for path, positive in DURATIONS if not positive} == ZERO_ALLOWED | relative


@pytest.mark.parametrize("path", POSITIVE, ids=".".join)
def test_a_positive_duration_refuses_zero_naming_its_path(tmp_path: Path, path: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, nested(path, 0))
    assert str(info.value) == f"{tmp_path / 'c.yaml'}: {'.'.join(path)}: must be > 0"


@pytest.mark.parametrize("path", [path for path, _ in DURATIONS], ids=".".join)
def test_every_duration_takes_units_and_refuses_negatives(tmp_path: Path, path: tuple[str, ...]) -> None:
    # Values within the cross-field rules (counts_sync_sec <= heartbeat_sec, max_ejection >= base_ejection).
    text, seconds = {"counts_sync_sec": ("50ms", 0.05), "max_ejection_sec": ("20m", 1200.0)}.get(
        path[-1], ("1500ms", 1.5)
    )
    config = load(tmp_path, nested(path, text))
    node: Any = config
    for part in path:
        node = getattr(node, part)
    assert isinstance(node, Seconds) and node == seconds
    with pytest.raises(ConfigError, match=f"{'.'.join(path)}: a duration cannot be negative"):
        load(tmp_path, nested(path, -1))


@pytest.mark.parametrize("path", sorted(ZERO_ALLOWED), ids=".".join)
def test_zero_is_accepted_where_it_means_off(tmp_path: Path, path: tuple[str, ...]) -> None:
    load(tmp_path, nested(path, 0))


def test_the_check_also_runs_on_a_direct_construction() -> None:
    from shared.config import HealthCheckConfig, TimeoutConfig

    with pytest.raises(ValueError, match=r"^interval_sec: must be > 0$"):
        HealthCheckConfig(interval_sec=Seconds(0))
    with pytest.raises(ValueError, match=r"^connect_timeout: must be > 0$"):
        TimeoutConfig(connect_timeout=Seconds(0))
    assert TimeoutConfig(drain_sec=Seconds(0)).drain_sec == 0.0


def test_positive_seconds_is_the_same_type() -> None:
    assert strip_annotated(PositiveSeconds) is Seconds
    assert is_positive(PositiveSeconds) and not is_positive(Seconds)
