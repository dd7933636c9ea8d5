"""The admin API's Litestar application: ``create_app(config, store=None)``."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from services.admin import dashboard, events, pools, rate_limits, routes, system
from services.admin.backends import BackendsController
from services.admin.context import DEPENDENCIES, AdminContext
from services.admin.docs_page import render_plugins
from services.admin.guards import StrictBody, admin_guard
from services.admin.metrics import AdminMetrics, count_responses, time_requests
from services.admin.problems import EXCEPTION_HANDLERS
from services.admin.snapshot import AdminSnapshot
from shared.aio import cancel_and_wait
from shared.config import Config
from shared.logs import get_logger
from shared.replica import Replica
from shared.service import open_store
from shared.store import Store

log = get_logger("admin")

SERVICE = "admin"
# How often the global in-flight counts (conn_count) are read.
INFLIGHT_SEC = 0.5
DESCRIPTION = (
    "Manage GoBalancer's backends and balancing algorithm. Compatible with the original GoBalancer API "
    "(`/health`, `/backends`), plus drain/enable/disable, `/algorithm`, `/pools` (named pools of backends, "
    "`/pools/{name}/backends`; `/backends` is the `default` pool's), `/routes` (the route table), `/replicas`, "
    "`/events` (SSE) and `/metrics`. "
    "Errors are `application/problem+json` (RFC 9457) naming the field at fault. When `admin.token` is set, "
    "mutating calls need `Authorization: Bearer <token>`."
)


def stream_cap(config: Config) -> int:
    """``admin.max_event_streams``, kept below the open-files limit: streams never use up the sockets
    an operator's call needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return config.admin.max_event_streams
    return max(0, min(config.admin.max_event_streams, soft - 128))


def create_app(config: Config, store: Store | None = None) -> Litestar:
    """The admin app. Without ``store`` the lifespan opens one from ``config`` (and heartbeats as a replica)."""
    snapshot = AdminSnapshot(start_healthy=config.health_check.start_healthy, max_streams=stream_cap(config))
    ctx = AdminContext(config=config, metrics=AdminMetrics(), snapshot=snapshot, store=store)

    async def stop_streams() -> None:
        await ctx.closing.wait()
        snapshot.close_streams()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        own = open_store(config) if store is None else None
        current = store or own
        assert current is not None
        ctx.store = current
        tasks = [
            asyncio.create_task(snapshot.follow(current), name="admin-watch"),
            asyncio.create_task(snapshot.follow_inflight(current, INFLIGHT_SEC), name="admin-inflight"),
            asyncio.create_task(stop_streams(), name="admin-stop-streams"),
        ]
        replica: Replica | None = None
        if own is not None:
            replica = Replica(
                own,
                SERVICE,
                ttl=config.redis.replica_ttl_sec,
                heartbeat=config.redis.heartbeat_sec,
                listen=config.admin.listen_address,
            )
            await replica.push()  # registered before the first request (False, not an error, if Redis is down)
            tasks.append(asyncio.create_task(replica.run(), name="admin-heartbeat"))
        try:
            yield
        finally:
            ctx.closing.set()
            snapshot.close_streams()
            await cancel_and_wait(tasks)  # re-cancels: 3.11 can lose a cancel inside redis-py
            if replica is not None and own is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(replica.deregister(), timeout=5)
                await own.close()
                ctx.store = None

    security: list[dict[str, list[str]]] = [{"bearer": []}] if config.admin.token else []
    app = Litestar(
        route_handlers=[
            BackendsController,
            *pools.ROUTES,
            *routes.ROUTES,
            *system.ROUTES,
            *rate_limits.ROUTES,
            *events.ROUTES,
            *dashboard.ROUTES,
        ],
        lifespan=[lifespan],
        state=State({"admin": ctx}),
        dependencies=DEPENDENCIES,
        guards=[admin_guard(config.admin)],
        dto=StrictBody,
        return_dto=None,
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
