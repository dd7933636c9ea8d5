"""W3C Trace Context (``traceparent``) for proxied requests, and the optional OTLP span export.

Every request forwarded to a backend carries a ``traceparent`` whose parent-id is the proxy's own
span: a valid incoming header keeps its trace-id and flags (the client's span becomes the parent of
the proxy's span); an absent or malformed one starts a new trace (and an incoming ``tracestate``,
which belonged to it, is dropped). The OpenTelemetry SDK is imported only when an OTLP endpoint is
configured: without one tracing costs the id generation and nothing else.
"""

from __future__ import annotations

import os
import random
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import msgspec

from shared.config import TracingConfig
from shared.logs import get_logger

log = get_logger("proxy.tracing")

# version "-" trace-id "-" parent-id "-" flags; lowercase hex only (W3C Trace Context §3.2).
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16

_rng = random.Random()
_bits = _rng.getrandbits


def parse_traceparent(value: bytes | None) -> tuple[bytes, bytes, int] | None:
    """(trace-id, parent-id, flags) of a valid header, else None.

    Version ``ff`` is invalid; version ``00`` is exactly 55 characters; a higher version may append
    fields after a ``-`` (forward compatibility: its first four fields are read as version 00's).
    """
    if value is None or len(value) < 55:
        return None
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == b"ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if len(value) != 55 and (version == b"00" or value[55:56] != b"-"):
        return None
    return trace_id, parent_id, int(flags, 16)


def _ids(trace_id: bytes | None, flags: int) -> bytes:
    """A version-00 header with a fresh span id (and a fresh trace id when ``trace_id`` is None)."""
    if trace_id is None:
        header = b"00-%032x-%016x-%02x" % (_bits(128), _bits(64), flags)
        if header[3:35] == _ZERO_TRACE:  # p = 2**-128; the spec forbids it all the same
            header = b"00-" + b"0" * 31 + b"1" + header[35:]
    else:
        header = b"00-%s-%016x-%02x" % (trace_id, _bits(64), flags)
    if header[36:52] == _ZERO_SPAN:
        header = header[:36] + b"0" * 15 + b"1" + header[52:]
    return header


class TraceContext:
    """The trace of one proxied request: the header sent to the backend (built once; the ids are slices
    of it) and what a span would record."""

    __slots__ = ("_header", "parent_id", "tracestate_kept")

    def __init__(self, header: bytes, parent_id: bytes | None, kept: bool) -> None:
        self._header = header
        self.parent_id = parent_id  # the client's span, when the request came with a valid traceparent
        self.tracestate_kept = kept

    @property
    def trace_id(self) -> bytes:
        return self._header[3:35]

    @property
    def span_id(self) -> bytes:
        """The proxy's span: the backend's parent."""
        return self._header[36:52]

    @property
    def flags(self) -> int:
        return int(self._header[53:55], 16)

    @property
    def sampled(self) -> bool:
        return self._header[54] in b"13579bdf"

    def header(self) -> bytes:
        return self._header


def from_header(header: bytes) -> TraceContext:
    """The context of a trace the proxy started itself (the fast path keeps only its header)."""
    return TraceContext(header, None, False)


def continue_or_start(incoming: bytes | None, sample_ratio: float) -> TraceContext:
    """The proxy's trace context for a request whose ``traceparent`` was ``incoming`` (None: absent)."""
    if incoming is not None:
        parsed = parse_traceparent(incoming)
        if parsed is not None:
            trace_id, parent_id, flags = parsed
            return TraceContext(_ids(trace_id, flags), parent_id, True)
    sampled = sample_ratio >= 1.0 or _rng.random() < sample_ratio
    return TraceContext(_ids(None, 1 if sampled else 0), None, False)


class SpanExporter:
    """One OTLP span per proxied request, batched and sent by the SDK's BatchSpanProcessor thread.

    Spans are built directly as ``ReadableSpan`` with the ids the proxy already put on the wire (the
    SDK's tracer would pick its own span id), so a backend's spans hang under the proxy's span.
    """

    def __init__(self, config: TracingConfig, *, schedule_delay_ms: float = 1000.0) -> None:
        # Imported here: the proxy runs without the otel extra when no endpoint is configured.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._ReadableSpan = ReadableSpan
        self._SpanContext = SpanContext
        self._TraceFlags = TraceFlags
        self._kind = SpanKind.SERVER
        self._ok = Status(StatusCode.UNSET)
        self._error = Status(StatusCode.ERROR)
        self._resource = Resource.create({"service.name": config.service_name})
        self._scope = InstrumentationScope("gobalancer.proxy")
        self.processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=config.otlp_endpoint), schedule_delay_millis=schedule_delay_ms
        )
        log.info("exporting spans", endpoint=config.otlp_endpoint)

    def export(
        self, trace: TraceContext, start_wall: float, duration: float, attributes: dict[str, Any], error: bool
    ) -> None:
        start_ns = int(start_wall * 1e9)
        flags = self._TraceFlags(trace.flags)
        context = self._SpanContext(int(trace.trace_id, 16), int(trace.span_id, 16), False, flags)
        parent = (
            self._SpanContext(int(trace.trace_id, 16), int(trace.parent_id, 16), True, flags)
            if trace.parent_id is not None
            else None
        )
        span = self._ReadableSpan(
            name=f"{attributes.get('http.request.method', 'HTTP')} proxy",
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=self._kind,
            instrumentation_scope=self._scope,
            status=self._error if error else self._ok,
            start_time=start_ns,
            end_time=start_ns + int(duration * 1e9),
        )
        self.processor.on_end(span)

    def shutdown(self) -> None:
        self.processor.shutdown()  # type: ignore[no-untyped-call]


TRACES_PATH = "/v1/traces"


def otlp_traces_endpoint(setting: str, environ: Mapping[str, str] | None = None) -> str:
    """Where spans are POSTed, by the OpenTelemetry convention ("" = no export).

    ``tracing.otlp_endpoint`` first: a base URL (``http://collector:4318``) gets ``/v1/traces`` appended
    to its path; a URL whose path already ends in ``/v1/traces`` is used as is. When the setting is
    empty, the standard variables: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is, as the
    specification says of the signal-specific variable), else ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL).
    """
    environ = os.environ if environ is None else environ
    base = setting.strip()
    if not base:
        traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if traces:
            return traces
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        if not base:
            return ""
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/")
    if path.endswith(TRACES_PATH):
        return base
    return urllib.parse.urlunsplit(parts._replace(path=path + TRACES_PATH))


def make_exporter(config: TracingConfig) -> SpanExporter | None:
    endpoint = otlp_traces_endpoint(config.otlp_endpoint)
    if not endpoint:
        return None
    try:
        return SpanExporter(msgspec.structs.replace(config, otlp_endpoint=endpoint))
    except ImportError as exc:
        log.error(
            "tracing.otlp_endpoint is set but OpenTelemetry is not installed (pip install '.[otel]')", error=str(exc)
        )
        return None
