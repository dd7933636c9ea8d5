"""From EndpointSlices (raw API JSON) to backends: readiness, draining, ports, merging."""

from __future__ import annotations

from typing import Any

from services.discovery.sources.kubernetes import endpoint_state, parse_weight, slices_backends
from tests.fakes.k8s_api import endpoint


def slice_(
    name: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": "1"},
        "addressType": kw.get("address_type", "IPv4"),
        "endpoints": endpoints,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}],
    }


def states(backends: dict[str, Any]) -> dict[str, str]:
    return {a: b.state for a, b in backends.items()}


def test_conditions() -> None:
    assert endpoint_state({"ready": True}) == "enabled"
    assert endpoint_state({}) == "enabled"  # unset ready means ready
    assert endpoint_state(None) == "enabled"
    assert endpoint_state({"ready": False, "serving": True, "terminating": True}) == "draining"
    assert endpoint_state({"ready": False, "terminating": True}) == "draining"  # serving unset means serving
    assert endpoint_state({"ready": False, "serving": False, "terminating": True}) is None
    assert endpoint_state({"ready": False}) is None  # not ready, not terminating: starting up


def test_ready_draining_and_unready() -> None:
    got, problems = slices_backends(
        [
            slice_(
                "a",
                [
                    endpoint("10.0.0.1"),
                    endpoint("10.0.0.2", ready=False, serving=True, terminating=True),
                    endpoint("10.0.0.3", ready=False),
                ],
            )
        ]
    )
    assert states(got) == {"10.0.0.1:8080": "enabled", "10.0.0.2:8080": "draining"}
    assert all(b.origin == "kubernetes" and b.weight == 1 for b in got.values())
    assert problems == []


def test_named_port_and_missing_named_port() -> None:
    got, _ = slices_backends([slice_("a", [endpoint("10.0.0.1")])], "metrics")
    assert list(got) == ["10.0.0.1:9090"]
    got, problems = slices_backends([slice_("a", [endpoint("10.0.0.1")])], "grpc")
    assert got == {} and problems == ["slice a: no port named 'grpc'"]
    got, problems = slices_backends([slice_("a", [endpoint("10.0.0.1")], ports=[])])
    assert got == {} and problems == ["slice a: no ports"]


def test_slices_are_merged_and_enabled_wins() -> None:
    got, _ = slices_backends(
        [
            slice_("a", [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False, terminating=True)]),
            slice_("b", [endpoint("10.0.0.3"), endpoint("10.0.0.2")]),
        ]
    )
    assert states(got) == {"10.0.0.1:8080": "enabled", "10.0.0.2:8080": "enabled", "10.0.0.3:8080": "enabled"}


def test_ipv6_addresses_are_bracketed() -> None:
    got, _ = slices_backends([slice_("a", [endpoint("fd00::1")], address_type="IPv6")])
    assert list(got) == ["[fd00::1]:8080"]


def test_weight_annotation_is_parsed_or_refused_with_a_reason() -> None:
    assert parse_weight(None) is None and parse_weight({}) is None
    assert parse_weight({"gobalancer.io/weight": "7"}) == 7
    assert parse_weight({"gobalancer.io/weight": " 10000 "}) == 10000
    for bad in ("0", "-1", "10001", "2.5", "heavy", ""):
        reason = parse_weight({"gobalancer.io/weight": bad})
        assert isinstance(reason, str) and "gobalancer.io/weight" in reason, bad


def test_weight_from_the_pod_else_the_service() -> None:
    slices = [
        slice_("a", [endpoint("10.0.0.1", pod="p1"), endpoint("10.0.0.2", pod="p2"), endpoint("10.0.0.3")]),
    ]
    backends, _ = slices_backends(slices, weight=3, pod_weights={"p1": 9})
    assert {a: b.weight for a, b in backends.items()} == {"10.0.0.1:8080": 9, "10.0.0.2:8080": 3, "10.0.0.3:8080": 3}
    backends, _ = slices_backends(slices)
    assert {b.weight for b in backends.values()} == {1}
