"""`GET /events`: Server-Sent Events of every change, starting with a snapshot.

Every stream reads the admin's one watch of the store, fanned out in process (``AdminSnapshot``):
a stream costs a queue, no Redis connection. The cap (``MAX_STREAMS``) is taken in the handler,
before the response starts, so it holds exactly however many streams open at once; a stream gives
its place back when it ends, however it ends (client gone, server stopping, or never started).
"""

from __future__ import annotations

import asyncio
import weakref

from litestar import get
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.response import Stream

from services.admin.problems import problem_responses
from services.admin.snapshot import KEEPALIVE, AdminSnapshot, Subscriber, TooManyStreams

KEEPALIVE_SEC = 15.0


class EventStream:
    """The body of one stream: an async iterator of encoded SSE messages."""

    def __init__(self, snapshot: AdminSnapshot, sub: Subscriber, keepalive: float = KEEPALIVE_SEC) -> None:
        self.snapshot, self.sub, self.keepalive = snapshot, sub, keepalive
        # Released when the stream ends or, if it never runs, when the response is dropped.
        self._release = weakref.finalize(self, snapshot.unsubscribe, sub)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        sub, snapshot = self.sub, self.snapshot
        while True:
            if sub.closed:
                self._release()
                raise StopAsyncIteration
            message = snapshot.next_message(sub)
            if message is not None:
                return message
            sub.wake.clear()
            try:
                await asyncio.wait_for(sub.wake.wait(), self.keepalive)
            except TimeoutError:
                return KEEPALIVE
            except BaseException:
                self._release()
                raise

    async def aclose(self) -> None:
        self._release()


@get(
    "/events",
    tags=["events"],
    summary="Server-Sent Events of every change",
    description=(
        "First a `snapshot` event with the whole state, then one event per change (`backend_added`, "
        "`backend_updated`, `backend_removed`, `health`, `ejection`, `algorithm`, `pool_set`, `pool_removed`, "
        "`routes`) whose `id` is the state version; "
        "a fresh `snapshot` after a re-sync (and for a reader that fell more than 1,024 events behind)."
    ),
    media_type="text/event-stream",
    responses=problem_responses(401, 403, 503),
)
async def events(snapshot: NamedDependency[AdminSnapshot]) -> Stream:
    try:
        sub = snapshot.subscribe()
    except TooManyStreams as exc:
        raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "5"}) from None
    return Stream(
        EventStream(snapshot, sub),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


ROUTES = [events]
