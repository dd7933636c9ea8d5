"""Connection limits (circuit breaking) per pool or backend, pure: admit, queue, or refuse at once.

``max_connections`` bounds the requests in flight to a backend across all replicas: this replica's exact
count plus the others' as last read from Redis (``services.proxy.policies.Counts``: ``local`` and
``others``, refreshed every ``redis.counts_sync_sec``). The others' counts are up to one refresh old, so
each replica assumes the others grew as much as it did since that refresh (the replicas' traffic is
spread alike by the balancers in front): it admits while::

    local + others + (replicas - 1) * max(0, local - local_at_refresh) < max_connections

which keeps the global count within the limit when every replica grows alike, and errs on the safe side
when one grows alone. Beyond it a request waits in a bounded queue (``max_pending``) for at most
``queue_timeout_sec``; beyond that, or when the queue is full, the proxy answers 503 at once with the
reason (``Rejected.reason``), instead of piling requests onto a saturated backend.

The proxy keeps one :class:`Circuit` per limited pool or backend; the queue holds whatever token the
proxy wants back (an exchange), in arrival order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from enum import IntEnum
from typing import Annotated, Generic, TypeVar

import msgspec

T = TypeVar("T", bound=Hashable)


class ConnectionLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Requests in flight to the backend across all replicas at most (0: no limit).
    max_connections: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Requests waiting for a connection slot at most, per replica (0: none wait: 503 at once).
    max_pending: Annotated[int, msgspec.Meta(ge=0)] = 0
    # How long a request waits for a slot before it is answered 503.
    queue_timeout_sec: Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)] = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.queue_timeout_sec):
            raise ValueError("queue_timeout_sec: must be a finite number of seconds")
        if self.max_pending and not self.max_connections:
            raise ValueError("max_pending: needs max_connections (requests wait for a connection slot)")


class Verdict(IntEnum):
    ADMIT = 0
    QUEUE = 1
    REJECT = 2


# The reasons of a 503 (the proxy's body or a header carries them; metrics count them).
FULL = "max_connections reached and no pending queue"
QUEUE_FULL = "max_connections reached and the pending queue is full"
QUEUE_TIMEOUT = "waited queue_timeout_sec for a connection slot"


class Circuit(Generic[T]):
    """The limits of one pool or backend on this replica."""

    __slots__ = ("_deadlines", "_local_at_refresh", "limits", "queue", "rejected", "replicas")

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.queue: deque[tuple[float, T]] = deque()
        self._deadlines: dict[T, float] = {}  # tokens still waiting (a token that left is skipped)
        self._local_at_refresh = 0
        self.replicas = 1
        self.rejected: dict[str, int] = {FULL: 0, QUEUE_FULL: 0, QUEUE_TIMEOUT: 0}

    def refreshed(self, local: int, replicas: int) -> None:
        """The others' counts were just read: ``local`` is this replica's count now."""
        self._local_at_refresh = local
        self.replicas = max(1, replicas)

    def has_room(self, local: int, others: int) -> bool:
        """Another request may start now."""
        limit = self.limits.max_connections
        if not limit:
            return True
        grown = local - self._local_at_refresh
        return local + others + (self.replicas - 1) * (grown if grown > 0 else 0) < limit

    def decide(self, local: int, others: int) -> Verdict:
        """A new request: admit it, queue it (then :meth:`enqueue` it), or refuse it (503, :attr:`reject_reason`)."""
        if not self._deadlines and self.has_room(local, others):
            return Verdict.ADMIT  # (never ahead of requests already waiting)
        if len(self._deadlines) < self.limits.max_pending:
            return Verdict.QUEUE
        self.rejected[self.reject_reason] += 1
        return Verdict.REJECT

    @property
    def reject_reason(self) -> str:
        """Why :meth:`decide` refuses (the 503's reason)."""
        return QUEUE_FULL if self.limits.max_pending else FULL

    def enqueue(self, token: T, now: float) -> float:
        """Queue ``token`` (after a QUEUE verdict); returns its deadline."""
        deadline = now + self.limits.queue_timeout_sec
        self.queue.append((deadline, token))
        self._deadlines[token] = deadline
        return deadline

    def leave(self, token: T) -> None:
        """``token`` gave up (its client left)."""
        self._deadlines.pop(token, None)

    def next_ready(self, local: int, others: int, now: float) -> T | None:
        """A slot may have freed (a request ended, or the counts were refreshed): the oldest waiter still
        in time to start, if there is room (the caller starts it, then calls again while it gets one)."""
        queue, waiting = self.queue, self._deadlines
        while queue:
            deadline, token = queue[0]
            if waiting.get(token) != deadline or deadline <= now:
                if deadline <= now and waiting.get(token) == deadline:
                    return None  # timed out: :meth:`expired` answers it
                queue.popleft()
                continue
            if not self.has_room(local, others):
                return None
            queue.popleft()
            del waiting[token]
            return token
        return None

    def expired(self, now: float) -> list[T]:
        """The waiters whose time is up (the caller answers them 503, :data:`QUEUE_TIMEOUT`)."""
        out: list[T] = []
        queue, waiting = self.queue, self._deadlines
        while queue and queue[0][0] <= now:
            deadline, token = queue.popleft()
            if waiting.get(token) == deadline:
                del waiting[token]
                out.append(token)
        self.rejected[QUEUE_TIMEOUT] += len(out)
        return out

    @property
    def pending(self) -> int:
        return len(self._deadlines)
