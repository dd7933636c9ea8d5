"""Serving Prometheus metrics from services that have no HTTP API of their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.addresses import format_address, parse_address
from shared.logs import get_logger

log = get_logger("metrics")
_MAX_REQUEST = 8192


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    registry: CollectorRegistry,
    ready: Callable[[], bool] | None,
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        request_line = head.split(b"\r\n", 1)[0].split(b" ")
        method, target = [*request_line, b"", b""][:2]
        path = target.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            status, body, ctype = b"405 Method Not Allowed", b"method not allowed\n", b"text/plain"
        elif path in (b"/metrics", b"/"):
            status, body, ctype = b"200 OK", generate_latest(registry), CONTENT_TYPE_LATEST.encode()
        elif path == b"/ready" and ready is not None:
            if ready():
                status, body, ctype = b"200 OK", b"ready\n", b"text/plain"
            else:
                status, body, ctype = b"503 Service Unavailable", b"not ready: stopping\n", b"text/plain"
        else:
            status, body, ctype = b"404 Not Found", b"not found: try /metrics\n", b"text/plain"
        writer.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, ctype, len(body))
        )
        if method != b"HEAD":
            writer.write(body)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def metrics_server(
    address: str, registry: CollectorRegistry, *, ready: Callable[[], bool] | None = None
) -> AsyncIterator[str]:
    """Serve ``GET /metrics`` on ``address`` for the duration of the context; yields the bound address.
    With ``ready``, also ``GET /ready``: 200 while ``ready()`` is true, else 503 (a readiness probe).

    An empty address serves nothing. A port already in use is logged, not fatal: the service itself
    matters more than its metrics (yields "").
    """
    if not address:
        yield ""
        return
    hp = parse_address(address, allow_empty_host=True)
    try:
        server = await asyncio.start_server(
            lambda r, w: _handle(r, w, registry, ready), hp.host or None, hp.port, limit=_MAX_REQUEST
        )
    except OSError as exc:
        log.warning("cannot serve metrics", address=address, error=str(exc))
        yield ""
        return
    sock = server.sockets[0].getsockname()
    bound = format_address(hp.host or "0.0.0.0", sock[1])
    log.info("serving metrics", address=bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
