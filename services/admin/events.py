"""`GET /events`: Server-Sent Events of every change, starting with a snapshot.

The store's ``watch()`` runs in a task of its own that feeds a queue; the response generator reads
the queue with a timeout so it can send keep-alive comments while nothing changes (and while Redis is
down, when ``watch()`` yields nothing). When the client goes away Litestar cancels the generator, whose
``finally`` cancels and awaits the watcher task: the subscription is closed and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import cast

import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.response import ServerSentEvent, ServerSentEventMessage

from services.admin.context import AdminContext, context_of
from services.admin.problems import problem_responses
from services.admin.schemas import AlgorithmOut, BackendOut, SnapshotOut
from shared.aio import cancel_and_wait
from shared.models import Event, Snapshot
from shared.store import UNAVAILABLE, Store

KEEPALIVE_SEC = 15.0
_encoder = msgspec.json.Encoder()


async def _snapshot_message(store: Store, snap: Snapshot, start_healthy: bool) -> ServerSentEventMessage:
    try:
        inflight = await store.global_inflight()
    except UNAVAILABLE:
        inflight = {}
    body = SnapshotOut(
        version=snap.version,
        backends=BackendOut.of_views(
            sorted(snap.backends.values(), key=lambda v: v.address), inflight, start_healthy=start_healthy
        ),
        algorithm=AlgorithmOut.of(snap.algorithm),
    )
    return ServerSentEventMessage(data=_encoder.encode(body).decode(), event="snapshot", id=str(snap.version))


def _event_message(event: Event) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=_encoder.encode(event).decode(), event=event.kind, id=str(event.version))


async def _watch_into(store: Store, queue: asyncio.Queue[Snapshot | Event]) -> None:
    watch = cast(AsyncGenerator[Snapshot | Event, None], store.watch())
    async with contextlib.aclosing(watch) as changes:
        async for change in changes:
            await queue.put(change)


async def stream(ctx: AdminContext, keepalive: float = KEEPALIVE_SEC) -> AsyncGenerator[ServerSentEventMessage, None]:
    store = ctx.require_store()
    queue: asyncio.Queue[Snapshot | Event] = asyncio.Queue(maxsize=1024)
    watcher = asyncio.create_task(_watch_into(store, queue), name="admin-events-watch")
    closing = asyncio.create_task(ctx.closing.wait(), name="admin-events-closing")
    getter: asyncio.Task[Snapshot | Event] | None = None
    ctx.event_streams += 1
    try:
        while True:
            if getter is None:
                getter = asyncio.create_task(queue.get(), name="admin-events-get")
            done, _ = await asyncio.wait({getter, closing, watcher}, timeout=keepalive, return_when="FIRST_COMPLETED")
            if getter in done:
                change = getter.result()
                getter = None
                if isinstance(change, Snapshot):
                    yield await _snapshot_message(store, change, ctx.start_healthy)
                else:
                    yield _event_message(change)
            elif watcher in done:
                watcher.result()  # re-raise what stopped the watcher
                return
            elif closing in done:
                return
            else:
                yield ServerSentEventMessage(comment="keep-alive")
    finally:
        ctx.event_streams -= 1
        await cancel_and_wait(t for t in (getter, watcher, closing) if t is not None)


@get(
    "/events",
    tags=["events"],
    summary="Server-Sent Events of every change",
    description=(
        "First a `snapshot` event with the whole state, then one event per change (`backend_added`, "
        "`backend_updated`, `backend_removed`, `health`, `ejection`, `algorithm`) whose `id` is the state version; "
        "a fresh `snapshot` after a re-sync."
    ),
    media_type="text/event-stream",
    responses=problem_responses(401, 503),
)
async def events(state: State) -> ServerSentEvent:
    ctx = context_of(state)
    if ctx.event_streams >= ctx.max_event_streams:
        raise HTTPException(
            status_code=503,
            detail=f"too many open event streams ({ctx.event_streams}); try again later",
            headers={"Retry-After": "5"},
        )
    return ServerSentEvent(stream(ctx), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


ROUTES = [events]
