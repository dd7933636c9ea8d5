"""Through an in-process proxy: W3C traceparent to backends, the JSON access log, OTLP span export."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from services.proxy.observability.tracing import parse_traceparent
from tests.helpers import eventually
from tests.integration.proxy.backends import Backend, Backends, read_response, request
from tests.integration.proxy.conftest import StartProxy

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def get(port: int, extra: bytes = b"", target: bytes = b"/") -> None:
    resp = await request(port, b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (target, extra))
    assert resp.status == 200


async def test_traceparent_created_continued_and_replaced(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    assert isinstance(b, Backend)
    proxy = await start_proxy([b])

    await get(proxy.port)
    created = b.requests[-1].all("traceparent")
    assert len(created) == 1 and parse_traceparent(created[0].encode()) is not None

    await get(proxy.port, f"traceparent: {VALID}\r\ntracestate: congo=t61rcWkgMzE\r\n".encode())
    seen = b.requests[-1]
    (continued,) = seen.all("traceparent")
    version, trace_id, parent_id, flags = continued.split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert parent_id != "00f067aa0ba902b7"  # the proxy's span is the backend's parent
    assert seen.all("tracestate") == ["congo=t61rcWkgMzE"]

    await get(proxy.port, b"traceparent: 00-not-a-trace-01\r\ntracestate: congo=t61rcWkgMzE\r\n")
    seen = b.requests[-1]
    (replaced,) = seen.all("traceparent")
    assert parse_traceparent(replaced.encode()) is not None and "not-a-trace" not in replaced
    assert seen.all("tracestate") == []

    await get(proxy.port)
    renewed = b.requests[-1].header("traceparent")
    assert renewed is not None and renewed.split("-")[1] != created[0].split("-")[1]


async def test_propagation_off_passes_the_header_untouched(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    assert isinstance(b, Backend)
    proxy = await start_proxy([b], tracing={"propagate": False})
    await get(proxy.port, b"traceparent: 00-not-a-trace-01\r\n")
    await get(proxy.port)
    assert b.requests[0].all("traceparent") == ["00-not-a-trace-01"] and b.requests[1].all("traceparent") == []


async def test_access_log_lines(tmp_path: Path, backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    assert isinstance(b, Backend)
    log_file = tmp_path / "access.log"
    proxy = await start_proxy([b], logging={"access_log": True, "access_log_file": str(log_file)})
    await get(proxy.port, f"traceparent: {VALID}\r\nX-Request-ID: rid-1\r\n".encode(), b"/a?x=1")
    resp = await request(proxy.port, b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
    assert resp.status == 200 and resp.body == b"hello"

    def lines() -> list[dict[str, object]]:
        text = log_file.read_text() if log_file.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def both_lines() -> list[dict[str, object]] | None:
        found = lines()
        return found if len(found) == 2 else None

    entries = await eventually(both_lines, message="two access-log lines")
    first, second = entries
    assert first["method"] == "GET" and first["target"] == "/a?x=1" and first["status"] == 200
    assert first["request_id"] == "rid-1" and first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first["backend"] == b.address and first["client"] == "127.0.0.1" and first["attempts"] == 1
    duration_ms, upstream_ms = first["duration_ms"], first["upstream_ms"]
    assert isinstance(duration_ms, float) and isinstance(upstream_ms, float)
    assert 0 <= upstream_ms <= duration_ms
    assert str(first["time"]).endswith("Z")
    assert second["method"] == "POST" and second["bytes_in"] == len(
        b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert second["bytes_out"] == len(b"".join(_raw_response(resp)))
    traceparent = b.requests[0].header("traceparent")
    assert traceparent is not None
    assert traceparent.split("-")[1] == first["trace_id"]


def _raw_response(resp: object) -> list[bytes]:
    from tests.integration.proxy.backends import Response

    assert isinstance(resp, Response)
    head = b"HTTP/1.1 %d OK\r\n" % resp.status + b"".join(
        b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in resp.headers
    )
    return [head, b"\r\n", resp.body]


async def test_access_log_sampling_and_off(tmp_path: Path, backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    sampled_file, off_file = tmp_path / "sampled.log", tmp_path / "off.log"
    sampled = await start_proxy(
        [b], logging={"access_log": True, "access_log_sample": 0.5, "access_log_file": str(sampled_file)}
    )
    off = await start_proxy([b], logging={"access_log": False, "access_log_file": str(off_file)})
    assert off.context.access_log is None  # off: the request path checks one attribute
    for port in (sampled.port, off.port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(200):
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        writer.close()
    log = sampled.context.access_log
    assert log is not None
    log.flush()
    count = len(sampled_file.read_text().splitlines())
    assert 50 <= count <= 150, count  # binomial(200, 0.5): outside this range ~1e-12
    assert not off_file.exists()


class OtlpReceiver:
    """A tiny OTLP/HTTP endpoint: decodes every ExportTraceServiceRequest POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> OtlpReceiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                headers = {k.strip().lower(): v.strip() for k, v in fields.items()}
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                if headers.get(b"content-encoding") == b"gzip":
                    body = gzip.decompress(body)
                assert head.startswith(b"POST /v1/traces ")
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                self.requests.append(message)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def spans(self) -> list[object]:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_otlp_export_of_a_span_per_request(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    receiver = await OtlpReceiver().start()
    try:
        endpoint = f"http://127.0.0.1:{receiver.port}/v1/traces"
        proxy = await start_proxy([b], tracing={"otlp_endpoint": endpoint, "service_name": "gb-test"})
        await get(proxy.port, f"traceparent: {VALID}\r\n".encode(), b"/traced")
        spans = await eventually(receiver.spans, timeout=10, message="span exported")
        (span,) = spans
        assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"  # type: ignore[attr-defined]
        assert span.parent_span_id.hex() == "00f067aa0ba902b7"  # type: ignore[attr-defined]
        assert isinstance(b, Backend)
        sent = b.requests[0].header("traceparent")
        assert sent is not None and sent.split("-")[2] == span.span_id.hex()  # type: ignore[attr-defined]
        attributes = {a.key: a.value for a in span.attributes}  # type: ignore[attr-defined]
        assert attributes["http.request.method"].string_value == "GET"
        assert attributes["http.response.status_code"].int_value == 200
        assert attributes["gobalancer.backend"].string_value == b.address
        assert attributes["url.path"].string_value == "/traced"
        resource = {a.key: a.value.string_value for a in receiver.requests[0].resource_spans[0].resource.attributes}
        assert resource["service.name"] == "gb-test"
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0  # type: ignore[attr-defined]
    finally:
        await receiver.stop()


async def test_no_exporter_without_endpoint(backends: Backends, start_proxy: StartProxy) -> None:
    b = await backends.add(Backend())
    proxy = await start_proxy([b])
    assert proxy.context.exporter is None
