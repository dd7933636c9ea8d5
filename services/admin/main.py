"""Entry point of the admin service: the Litestar app served by uvicorn on ``admin.listen_address``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator

import uvicorn
from litestar import Litestar

from services.admin.app import SERVICE, create_app
from services.admin.context import context_of
from shared.addresses import parse_address
from shared.config import Config
from shared.gc_tuning import tune_gc
from shared.logs import get_logger
from shared.service import require_redis_url, run_service

log = get_logger("admin")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the shared service runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_address(config: Config) -> tuple[str, int]:
    """The host and port to bind; exits (code 2, one line) when an open API would face the network."""
    hp = parse_address(config.admin.listen_address, allow_empty_host=True)
    if not config.admin.token and not hp.is_loopback and not config.admin.allow_insecure:
        print(
            f"gobalancer {SERVICE}: refusing to serve the admin API on {config.admin.listen_address} without a token: "
            "set admin.token (GOBALANCER_ADMIN_TOKEN), bind to loopback, or set admin.allow_insecure: true",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return (hp.host or "0.0.0.0"), hp.port


def build_server(config: Config) -> tuple[_Server, Litestar]:
    host, port = bind_address(config)
    app = create_app(config)
    server_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    return _Server(server_config), app


async def run(config: Config, stop: asyncio.Event) -> None:
    require_redis_url(SERVICE, config)
    server, app = build_server(config)
    tune_gc()  # (everything is imported, the app built: collected once and frozen, as in the other services)
    serving = asyncio.create_task(server.serve(), name="admin-uvicorn")
    stopping = asyncio.create_task(stop.wait(), name="admin-stop")
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()
            if not server.started:  # the port was taken, or the lifespan failed
                raise SystemExit(1)
            return
        log.info("admin API stopping")
        context_of(app.state).closing.set()  # end open event streams so connections can close
        server.should_exit = True
        await serving
    finally:
        stopping.cancel()
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving


def main(argv: list[str] | None = None) -> int:
    return run_service(SERVICE, run, argv)
