"""`/health`, `/algorithm`, `/replicas` and `/metrics`."""

from __future__ import annotations

import time
from typing import Annotated

from litestar import Response, get, put
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, Parameter

from services.admin.context import context_of
from services.admin.problems import problem_responses
from services.admin.schemas import AlgorithmOut, AlgorithmUpdate, HealthOut, ReplicaOut
from shared.logs import get_logger
from shared.store import UNAVAILABLE

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
async def health(state: State) -> Response[HealthOut]:
    store = context_of(state).require_store()
    try:
        version = await store.version()
    except UNAVAILABLE as exc:
        reason = f"redis is unreachable: {exc or type(exc).__name__}"
        return Response(HealthOut(status="unavailable", redis="down", reason=reason), status_code=503)
    return Response(HealthOut(status="ok", redis="up", version=version), status_code=200)


@get("/algorithm", tags=["algorithm"], summary="The balancing algorithm in use", responses=problem_responses(401, 503))
async def get_algorithm(state: State) -> AlgorithmOut:
    store = context_of(state).require_store()
    return AlgorithmOut.of(await store.get_algorithm())


@put(
    "/algorithm",
    tags=["algorithm"],
    summary="Switch every proxy's algorithm live",
    opt={"body": AlgorithmUpdate},
    responses=problem_responses(400, 401, 503),
)
async def put_algorithm(state: State, data: JSONBody[AlgorithmUpdate]) -> AlgorithmOut:
    store = context_of(state).require_store()
    changed = await store.set_algorithm(data.to_setting())
    log.info("algorithm set", algorithm=data.algorithm, changed=changed)
    return AlgorithmOut.of(await store.get_algorithm(), changed=changed)


@get(
    "/replicas",
    tags=["system"],
    summary="Live replicas, their heartbeat age and per-backend in-flight counts",
    responses=problem_responses(401, 503),
)
async def replicas(
    state: State,
    service: Annotated[str | None, Parameter(description="only replicas of this service, e.g. proxy")] = None,
) -> list[ReplicaOut]:
    store = context_of(state).require_store()
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
async def metrics(state: State) -> Response[bytes]:
    ctx = context_of(state)
    store = ctx.require_store()
    try:
        snap = await store.snapshot()
        live = await store.replicas()
    except UNAVAILABLE:
        ctx.metrics.store_down()
    else:
        ctx.metrics.observe_state(snap, live, start_healthy=ctx.start_healthy)
    ctx.metrics.event_streams.set(ctx.event_streams)
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


ROUTES = [health, get_algorithm, put_algorithm, replicas, metrics]
