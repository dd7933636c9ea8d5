"""`/health`, `/algorithm`, `/replicas` and `/metrics`."""

from __future__ import annotations

import time
from typing import Annotated

from litestar import Response, get, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, QueryParameter

from services.admin.context import CATCH_UP_SEC, AdminContext
from services.admin.problems import problem_responses
from services.admin.schemas import AlgorithmOut, AlgorithmUpdate, HealthOut, ReplicaOut
from services.admin.snapshot import AdminSnapshot
from shared.logs import get_logger
from shared.models import Snapshot
from shared.store import UNAVAILABLE, Store

log = get_logger("admin")


@get(
    "/health",
    tags=["system"],
    summary="Liveness and Redis reachability",
    description="200 when the service and its Redis are fine; 503 with a reason when Redis is unreachable.",
    responses={
        503: ResponseSpec(data_container=HealthOut, description="Redis is unreachable", generate_examples=False)
    },
)
async def health(store: NamedDependency[Store]) -> Response[HealthOut]:
    try:
        version = await store.version()
    except UNAVAILABLE as exc:
        reason = f"redis is unreachable: {exc or type(exc).__name__}"
        return Response(HealthOut(status="unavailable", redis="down", reason=reason), status_code=503)
    return Response(HealthOut(status="ok", redis="up", version=version), status_code=200)


@get("/algorithm", tags=["algorithm"], summary="The balancing algorithm in use", responses=problem_responses(401, 503))
async def get_algorithm(snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store]) -> AlgorithmOut:
    if snapshot.synced:
        return AlgorithmOut.of(snapshot.mirror.algorithm)
    return AlgorithmOut.of(await store.get_algorithm())


@put(
    "/algorithm",
    tags=["algorithm"],
    summary="Switch every proxy's algorithm live",
    responses=problem_responses(400, 401, 403, 415, 503),
)
async def put_algorithm(
    snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], data: JSONBody[AlgorithmUpdate]
) -> AlgorithmOut:
    changed = await store.set_algorithm(data.to_setting())
    log.info("algorithm set", algorithm=data.algorithm, changed=changed)
    if await snapshot.caught_up(await store.version(), CATCH_UP_SEC):
        return AlgorithmOut.of(snapshot.mirror.algorithm, changed=changed)
    return AlgorithmOut.of(await store.get_algorithm(), changed=changed)


@get(
    "/replicas",
    tags=["system"],
    summary="Live replicas, their heartbeat age and per-backend in-flight counts",
    responses=problem_responses(401, 503),
)
async def replicas(
    store: NamedDependency[Store],
    service: Annotated[str | None, QueryParameter(description="only replicas of this service, e.g. proxy")] = None,
) -> list[ReplicaOut]:
    at = time.time()
    return [
        ReplicaOut(
            id=r.id,
            service=r.service,
            host=r.host,
            pid=r.pid,
            listen=r.listen,
            started_at=r.started_at,
            heartbeat_at=r.heartbeat_at,
            heartbeat_age_sec=round(max(0.0, at - r.heartbeat_at), 3),
            inflight=r.inflight,
            totals=r.totals,
        )
        for r in sorted(await store.replicas(service), key=lambda r: (r.service, r.id))
    ]


@get("/metrics", tags=["system"], summary="Prometheus metrics", media_type="text/plain; version=0.0.4; charset=utf-8")
async def metrics(
    ctx: NamedDependency[AdminContext], snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store]
) -> Response[bytes]:
    try:
        mirror = snapshot.mirror
        if snapshot.synced:
            snap = Snapshot(version=mirror.version, backends=mirror.backends, algorithm=mirror.algorithm)
        else:
            snap = await store.snapshot()
        live = await store.replicas()
    except UNAVAILABLE:
        ctx.metrics.store_down()
    else:
        ctx.metrics.observe_state(snap, live, start_healthy=ctx.start_healthy)
    ctx.metrics.event_streams.set(ctx.event_streams)
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


ROUTES = [health, get_algorithm, put_algorithm, replicas, metrics]
