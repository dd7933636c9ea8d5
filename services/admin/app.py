"""The admin API's Litestar application: ``create_app(config, store=None)``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from services.admin import dashboard, events, system
from services.admin.backends import BackendsController
from services.admin.context import AdminContext
from services.admin.docs_page import render_plugins
from services.admin.guards import strict_body, token_guard
from services.admin.metrics import AdminMetrics, count_responses, time_requests
from services.admin.problems import EXCEPTION_HANDLERS
from shared.aio import cancel_and_wait
from shared.config import Config
from shared.logs import get_logger
from shared.replica import Replica
from shared.service import open_store
from shared.store import Store

log = get_logger("admin")

SERVICE = "admin"
DESCRIPTION = (
    "Manage GoBalancer's backends and balancing algorithm. Compatible with the original GoBalancer API "
    "(`/health`, `/backends`), plus drain/enable/disable, `/algorithm`, `/replicas`, `/events` (SSE) and `/metrics`. "
    "Errors are `application/problem+json` (RFC 9457) naming the field at fault. When `admin.token` is set, "
    "mutating calls need `Authorization: Bearer <token>`."
)


def create_app(config: Config, store: Store | None = None) -> Litestar:
    """The admin app. Without ``store`` the lifespan opens one from ``config`` (and heartbeats as a replica)."""
    ctx = AdminContext(config=config, metrics=AdminMetrics(), store=store)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        if store is not None:
            try:
                yield
            finally:
                ctx.closing.set()
            return
        own = open_store(config)
        ctx.store = own
        replica = Replica(own, SERVICE, ttl=config.redis.replica_ttl_sec, heartbeat=config.redis.heartbeat_sec)
        await replica.push()  # registered before the first request (False, not an error, if Redis is down)
        task = asyncio.create_task(replica.run(), name="admin-heartbeat")
        try:
            yield
        finally:
            ctx.closing.set()
            await cancel_and_wait([task])  # re-cancels: 3.11 can lose a cancel inside redis-py
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(replica.deregister(), timeout=5)
            await own.close()
            ctx.store = None

    security: list[dict[str, list[str]]] = [{"bearer": []}] if config.admin.token else []
    app = Litestar(
        route_handlers=[BackendsController, *system.ROUTES, *events.ROUTES, *dashboard.ROUTES],
        lifespan=[lifespan],
        state=State({"admin": ctx}),
        guards=[token_guard(config.admin)],
        before_request=strict_body,
        before_send=[count_responses(ctx.metrics)],
        middleware=[time_requests(ctx.metrics)],
        exception_handlers=dict(EXCEPTION_HANDLERS),  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="GoBalancer admin API",
            version="1.0.0",
            description=DESCRIPTION,
            path="/schema",
            render_plugins=render_plugins(config.admin.swagger_ui_url),
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")},
            ),
            security=security or None,
        ),
        debug=False,
        logging_config=None,
    )
    return app
