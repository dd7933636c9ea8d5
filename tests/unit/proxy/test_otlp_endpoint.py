"""Where spans go: the OpenTelemetry convention for the traces endpoint (issue 17.6)."""

from __future__ import annotations

import pytest

from services.proxy.observability.tracing import otlp_traces_endpoint


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
        ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
        ("https://otel.example:4318/collector", "https://otel.example:4318/collector/v1/traces"),
        ("http://127.0.0.1:4318/v1/traces", "http://127.0.0.1:4318/v1/traces"),
        ("http://127.0.0.1:4318/v1/traces/", "http://127.0.0.1:4318/v1/traces/"),
        ("http://[::1]:4318?tenant=a", "http://[::1]:4318/v1/traces?tenant=a"),
    ],
)
def test_the_setting_is_a_base_url_or_the_full_traces_url(setting: str, expected: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:2"}
    assert otlp_traces_endpoint(setting, environ) == expected


def test_the_standard_variables_when_the_setting_is_empty() -> None:
    assert otlp_traces_endpoint("", {}) == ""
    assert otlp_traces_endpoint("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318/v1/traces"
    # the signal-specific variable is used as is, and wins over the generic one
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/spans"}
    assert otlp_traces_endpoint("", both) == "http://t:1/spans"
    assert otlp_traces_endpoint("", {"OTEL_EXPORTER_OTLP_ENDPOINT": " "}) == ""
