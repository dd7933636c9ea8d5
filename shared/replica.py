"""A service replica's presence in the store: heartbeat plus (for proxies) in-flight counters.

The hot path only updates :attr:`Replica.local` (a plain dict of exact counts, directly or through
:meth:`Replica.add`) with no I/O. A background task pushes the change since the last push
(the difference of two snapshots of ``local``, so the hot path keeps no second table of deltas)
with HINCRBY in one round trip every ``flush_interval`` and renews the heartbeat, so a replica's
contribution expires ``ttl`` after its last push — a crashed replica's counts leave the global sum
by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from typing import Protocol

from shared.logs import get_logger
from shared.models import ReplicaInfo
from shared.store import STORE_ERRORS, Store

log = get_logger("replica")


class TotalsSource(Protocol):
    """Request totals counted elsewhere (a proxy reads them from its data plane's counters)."""

    def has_totals(self) -> bool:
        """Some were counted since the last :meth:`take_totals`."""
        ...

    def take_totals(self) -> Mapping[str, int]:
        """The totals counted since the last call, by ``"address|class"``, and start again from zero."""
        ...


def new_replica_id(service: str) -> str:
    return (
        os.environ.get("GOBALANCER_REPLICA_ID")
        or f"{service}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )


class Replica:
    def __init__(
        self,
        store: Store,
        service: str,
        *,
        ttl: float,
        heartbeat: float,
        flush_interval: float | None = None,
        listen: str = "",
        replica_id: str | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.heartbeat = heartbeat
        # Pushes of changed counts; a service that counts nothing in flight wakes only to heartbeat.
        self.flush_interval = heartbeat if flush_interval is None else flush_interval
        self.info = ReplicaInfo(
            id=replica_id or new_replica_id(service),
            service=service,
            started_at=time.time(),
            heartbeat_at=0.0,
            host=socket.gethostname(),
            pid=os.getpid(),
            listen=listen,
        )
        # Exact in-flight counts of this replica. The hot path may leave an entry at 0 (one dict
        # operation less per request); the heartbeat task drops those.
        self.local: dict[str, int] = {}
        self._pushed: dict[str, int] = {}  # ``local`` as of the last push (deltas are taken against it)
        self.totals: dict[str, int] = defaultdict(int)  # requests finished, by "address|class"
        self._total_keys: dict[str, list[str]] = {}  # address -> its keys in ``totals``
        self._dropped_totals: list[str] = []  # keys forgotten since the last push (deleted in Redis by it)
        self.totals_source: TotalsSource | None = None
        self._seq = 0
        self._needs_absolute = True
        self._last_push = 0.0
        self._reachable = True
        self.failed_pushes = 0  # pushes Redis did not take (unreachable, or refusing writes)
        self.pushed = asyncio.Event()  # set after every successful push (tests wait on it)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def reachable(self) -> bool:
        """The last push reached Redis."""
        return self._reachable

    def add(self, address: str, delta: int) -> None:
        """Count ``delta`` requests/connections in flight to ``address``. Hot path: no I/O."""
        count = self.local.get(address, 0) + delta
        if count:
            self.local[address] = count
        else:
            self.local.pop(address, None)

    def forget(self, address: str) -> None:
        """A backend left: its request totals go, here and (with the next push) in Redis."""
        for key in self._total_keys.pop(address, ()):
            if self.totals.pop(key, None) is not None:
                self._dropped_totals.append(key)

    def _drop_zeros(self) -> None:
        local = self.local
        for address in [a for a, c in local.items() if not c]:
            del local[address]

    def _has_totals(self) -> bool:
        return self.totals_source is not None and self.totals_source.has_totals()

    async def push(self) -> bool:
        """Send pending deltas (or the absolute counts after a failure) plus the heartbeat."""
        self._drop_zeros()
        absolute = dict(self.local)
        pushed, self._pushed = self._pushed, absolute
        deltas = {a: c - pushed.get(a, 0) for a, c in absolute.items() if c != pushed.get(a, 0)}
        deltas.update((a, -c) for a, c in pushed.items() if a not in absolute)
        total_deltas = self.totals_source.take_totals() if self.totals_source is not None else {}
        totals = self.totals
        for key, n in total_deltas.items():
            if key not in totals:
                self._total_keys.setdefault(key.rpartition("|")[0], []).append(key)
            totals[key] += n
        dropped, self._dropped_totals = self._dropped_totals, []
        self._seq += 1
        try:
            await self.store.push_counters(
                self.info,
                self._seq,
                deltas,
                absolute,
                self.ttl,
                force_absolute=self._needs_absolute,
                total_deltas=total_deltas,
                totals=self.totals,  # (read before this coroutine next changes it)
                dropped_totals=dropped,
            )
        except STORE_ERRORS as exc:
            # Unreachable, or refusing writes (OOM, MISCONF, READONLY after a failover...). The batch
            # may or may not have been applied: the next push sends absolute counts (and totals:
            # the dropped ones with them).
            self._needs_absolute = True
            self.failed_pushes += 1
            if self._reachable:
                log.warning("cannot push counters; will resend absolute counts", error=str(exc) or repr(exc))
                self._reachable = False
            return False
        self._needs_absolute = False
        self._last_push = time.monotonic()
        if not self._reachable:
            log.info("counters pushed again")
            self._reachable = True
        self.pushed.set()
        return True

    async def run(self) -> None:
        """Push while deltas are pending (every flush_interval) and at least every heartbeat."""
        while True:
            due = time.monotonic() - self._last_push >= self.heartbeat
            self._drop_zeros()  # (a request that came and went is no change to push)
            if due or self._needs_absolute or self.local != self._pushed or self._has_totals() or self._dropped_totals:
                try:
                    await self.push()
                except Exception as exc:  # a bug must not end the heartbeat (the counts would expire)
                    log.error("counter push failed", error=repr(exc))
                    self._needs_absolute = True
            await asyncio.sleep(self.flush_interval if self._reachable else min(1.0, self.heartbeat))

    async def deregister(self) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            await self.store.deregister(self.id)
