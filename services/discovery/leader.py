"""One discovery replica acts at a time: a Redis lease with a fencing token, and the reconcile loop.

Every replica runs its source (so a standby holds a current desired set); only the lease holder
writes. The lease's TTL in Redis is ``ttl - poll`` where ``poll`` is how often a standby tries to take
it, so a standby takes over at most ``ttl`` after the leader's last renewal. Every write carries the
lease (``fence=``): a paused ex-leader's late write is refused with ``Fenced`` and it steps down.

A new leader reconciles from its source's *current* set against the store: when nothing changed
while the lease moved, the store scripts see equal records and write nothing — no event, no flap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from services.discovery import reconcile
from services.discovery.desired import Desired
from services.discovery.seeding import Seeder
from shared.aio import cancel_and_wait
from shared.logs import get_logger
from shared.models import Origin
from shared.store import STORE_ERRORS, Fenced, Lease, Store

log = get_logger("discovery.leader")

LEASE = "discovery"


class Leader:
    def __init__(
        self,
        store: Store,
        desired: Desired,
        *,
        origin: Origin,
        fields: tuple[str, ...],
        holder: str,
        ttl: float,
        seeder: Seeder | None = None,
    ) -> None:
        self.store = store
        self.seeder = seeder  # pools and routes, written before the backends (which name the pools)
        self.desired = desired
        self.origin: Origin = origin
        self.fields = fields
        self.holder = holder
        # A standby polls every `poll`; the lease lives `ttl - poll` in Redis; the leader renews 3x per life.
        ttl = max(ttl, 0.3)
        self.poll = min(1.0, ttl / 10)
        self.lease_ttl = max(0.05, ttl - self.poll)
        self.renew = self.lease_ttl / 3
        self.lease: Lease | None = None
        self.reconciles = 0  # completed reconciles as leader (tests and logs)
        # Backends written by this replica (metrics): every reconcile counts into it as writes land,
        # also those of a reconcile cut short; its ``conflicts`` are the last reconcile's.
        self.writes = reconcile.Outcome()
        self.errors = 0  # reconciles cut short by a failed store call (metrics)
        self.is_leader = asyncio.Event()
        self._conflicts: set[str] = set()
        self._denied: set[str] = set()
        self._applied = -1  # the desired generation last reconciled in this term

    async def _tick_lease(self) -> None:
        try:
            lease = await self.store.acquire_lease(LEASE, self.holder, self.lease_ttl, held=self.lease)
        except STORE_ERRORS as exc:
            if self.lease is not None:
                log.warning("cannot renew the lease; writes will be refused if it lapses", error=str(exc))
            return
        if lease is not None and (self.lease is None or lease.value != self.lease.value):
            log.info("leading discovery", lease=lease.value, origin=self.origin)
            self._applied = -1  # a new term: reconcile from the source's current state
            self.is_leader.set()
        elif lease is None and self.lease is not None:
            log.warning("lease lost; standing by", lease=self.lease.value)
            self.is_leader.clear()
        self.lease = lease

    async def _keep_lease(self) -> None:
        while self.lease is not None:
            await asyncio.sleep(self.renew)
            await self._tick_lease()

    async def _reconcile(self) -> bool:
        """One reconcile as leader; False when it must be retried (redis unreachable or refusing writes)."""
        lease = self.lease
        assert lease is not None and self.desired.value is not None
        generation = self.desired.generation
        outcome = self.writes
        # A reconcile of thousands of backends outlasts the lease: it is renewed meanwhile.
        keeper = asyncio.create_task(self._keep_lease())
        try:
            if self.seeder is not None:
                await self.seeder.apply(self.store, self.desired.settings, lease)
            await reconcile.apply(self.store, self.desired.value, self.origin, self.fields, lease, outcome)
        except Fenced:
            self.errors += 1
            log.warning("write fenced: another replica leads now; standing by", lease=lease.value)
            self.lease = None
            self.is_leader.clear()
            return True
        except STORE_ERRORS as exc:
            self.errors += 1
            log.warning("cannot reconcile: redis unreachable", error=str(exc) or type(exc).__name__)
            return False
        finally:
            await cancel_and_wait([keeper])
        for address in sorted(set(outcome.conflicts) - self._conflicts):
            log.info("address held by another origin; left alone", address=address)
        self._conflicts = set(outcome.conflicts)
        for refusal in sorted(set(outcome.denied) - self._denied):
            log.warning("backend refused by backend_deny; not written", refusal=refusal)
        self._denied = set(outcome.denied)
        self._applied = generation
        self.reconciles += 1
        return True

    def _pending(self) -> bool:
        return self.lease is not None and self.desired.value is not None and self.desired.generation != self._applied

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire/renew the lease; as leader reconcile on every desired change and at every renewal
        (the periodic pass repairs outside changes to our backends, e.g. one deleted through the API)."""
        self._applied = -1
        next_lease = 0.0
        retry_at = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                periodic = False
                if now >= next_lease:
                    await self._tick_lease()
                    next_lease = now + (self.renew if self.lease is not None else self.poll)
                    periodic = True
                self.desired.changed.clear()
                ready = self.lease is not None and self.desired.value is not None
                due = periodic or (self._pending() and now >= retry_at)
                if ready and due and not await self._reconcile():
                    retry_at = time.monotonic() + 0.5
                deadline = next_lease
                if self._pending():
                    if retry_at <= time.monotonic():
                        continue
                    deadline = min(deadline, retry_at)
                waiters = [asyncio.ensure_future(self.desired.changed.wait()), asyncio.ensure_future(stop.wait())]
                try:
                    timeout = max(0.0, deadline - time.monotonic())
                    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            if self.lease is not None:
                with contextlib.suppress(*STORE_ERRORS):
                    await self.store.release_lease(self.lease)
                log.info("lease released", lease=self.lease.value)
                self.lease = None
                self.is_leader.clear()
