"""Spans reach a real HTTP collector on the path the OpenTelemetry convention gives (issue 17.6)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.proxy.observability.tracing import continue_or_start, make_exporter
from shared.config import TracingConfig


class Collector:
    """Answers 200 to every POST and records the path it was posted to."""

    def __init__(self) -> None:
        paths: list[str] = []
        self.paths = paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                paths.append(self.path)
                self.send_response(200 if self.path.endswith("/v1/traces") else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        c.close()


def export_one(config: TracingConfig) -> None:
    exporter = make_exporter(config)
    assert exporter is not None
    trace = continue_or_start(None, 1.0)
    exporter.export(trace, 1.7e9, 0.001, {"http.request.method": "GET"}, False)
    exporter.shutdown()  # flushes the batch: the POST is done when it returns


@pytest.mark.parametrize(("suffix", "posted"), [("", "/v1/traces"), ("/", "/v1/traces"), ("/v1/traces", "/v1/traces")])
def test_the_setting(collector: Collector, suffix: str, posted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    export_one(TracingConfig(otlp_endpoint=collector.url + suffix))
    assert collector.paths == [posted]


def test_the_standard_variables(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url + "/base")
    export_one(TracingConfig())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.url + "/custom/v1/traces")
    export_one(TracingConfig())
    assert collector.paths == ["/base/v1/traces", "/custom/v1/traces"]


def test_no_endpoint_anywhere_no_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert make_exporter(TracingConfig()) is None
