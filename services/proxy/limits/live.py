"""The rate-limit rules in force in a proxy process, swapped live when ``PUT /rate-limits`` changes them.

The rules come from the store's document (``NS:rate_limits``, ``shared.store.rate_limits``) once there is
one, else from the config file's ``rate_limits.rules``. The process reads the document when it starts, then
follows the ``rate_limits`` events its balancer's watch delivers (the event carries the whole document) and
reads it again after every full re-sync of the view (a lost event). A change builds a new ``Gate`` and
assigns it to every listener's ``Context.gate`` in one step of the loop: a request reads ``ctx.gate`` once,
so requests in flight finish under the rules they started with and nothing is dropped. A rule kept (same
name, rate, burst and key) keeps its limiter and its counts (``Gate(keep=...)``); the sync task follows the
new limiters. With no rule left the contexts get ``gate = None`` again: no cost per request.

``max_keys`` and ``sync_sec`` stay the config file's (process settings, not rules).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from services.proxy.limits.gate import Gate
from services.proxy.limits.sync import RateLimitSync
from shared.aio import cancel_and_wait
from shared.config.limits import RateLimitsConfig, RateLimitsDocument
from shared.logs import get_logger
from shared.models import Event, Snapshot
from shared.store import STORE_ERRORS, Store
from shared.store.rate_limits import get_rate_limits

if TYPE_CHECKING:
    from services.proxy.context import Context

log = get_logger("rate-limits")


class LiveLimits:
    """The process's gate (None without rules), its sync with Redis, and how a new table gets in."""

    def __init__(self, config: RateLimitsConfig, loop: asyncio.AbstractEventLoop, store: Store | None) -> None:
        self.config = config
        self.loop = loop
        self.store = store
        self.gate = Gate.for_loop(config, loop)
        self.source = "config"  # or "store": where the rules in force come from
        self.version = -1  # the state version of the store's document in force (-1: not read yet)
        self.installs = 0  # tables installed (the config file's at start not counted)
        self.changed = asyncio.Event()  # set after every install
        self.sync: RateLimitSync | None = None
        self._contexts: list[Context] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._reread: asyncio.Task[None] | None = None

    # -- wiring ----------------------------------------------------------------------------------

    def attach(self, contexts: Iterable[Context]) -> None:
        """The listeners' contexts, which get every new gate."""
        self._contexts = list(contexts)
        for ctx in self._contexts:
            ctx.gate = self.gate
        self._follow_sync()

    async def load(self, timeout: float = 1.0) -> None:
        """Read the store's document (at start): the config file's rules stay in force if Redis does not
        answer within ``timeout`` (the next re-sync of the view reads it again)."""
        if self.store is None:
            return
        before = self.version
        try:
            doc, version = await asyncio.wait_for(get_rate_limits(self.store), timeout)
        except (*STORE_ERRORS, TimeoutError) as exc:
            log.warning("cannot read the stored rate limits; the config file's apply", error=str(exc) or repr(exc))
            return
        # No event applied meanwhile: what was read is the store's state, even at a lower version (a Redis
        # that lost its data, or was replaced, counts from 0 again).
        self.install(doc, version, latest=self.version == before)

    def on_item(self, item: Snapshot | Event) -> None:
        """What the balancer's watch applied (``StoreBalancer.apply_listeners``)."""
        if isinstance(item, Snapshot):
            # A full re-sync: an event may have been lost; read the document again (in the background).
            if self.store is not None and (self._reread is None or self._reread.done()):
                self._reread = self.loop.create_task(self.load())
        elif item.kind == "rate_limits":
            self.install(item.rate_limits, item.version)

    async def close(self) -> None:
        # (again and again if need be: Python 3.11 can lose a cancel inside redis-py)
        await cancel_and_wait(t for t in (self._reread, self._sync_task) if t is not None)

    # -- installing a table ----------------------------------------------------------------------

    def install(self, doc: RateLimitsDocument | None, version: int, *, latest: bool = False) -> bool:
        """Put the rules of ``doc`` (None: the config file's) in force, if ``version`` is newer than the
        document in force (or ``latest``: read from the store with no event since). True when installed."""
        if version <= self.version and not latest:
            return False
        self.version = version
        source = "store" if doc is not None else "config"
        rules = doc.rules if doc is not None else self.config.rules
        current = self.gate
        if source == self.source and current is not None and current.config.rules == rules:
            return False
        if source == self.source == "config" and current is None and not rules:
            return False
        offset = current.limiters[0].offset if current is not None and current.limiters else None
        if offset is None:
            offset = time.time() - self.loop.time()
        config = msgspec.structs.replace(self.config, rules=list(rules))
        gate = Gate(config, offset, keep=current) if rules else None
        self.gate = gate
        self.source = source
        for ctx in self._contexts:
            ctx.gate = gate  # (one assignment each, within one step of the loop)
        self._follow_sync()
        self.installs += 1
        log.info("rate limits in force", source=source, rules=[r.name for r in rules], version=version)
        self.changed.set()
        return True

    def _follow_sync(self) -> None:
        """The sync task syncs the limiters in force (started with the first rules; with none it idles)."""
        if not self._contexts or self.store is None:
            return
        limiters = self.gate.limiters if self.gate is not None else []
        if self.sync is None:
            if not limiters:
                return
            self.sync = RateLimitSync(self.store, limiters, interval=self.config.sync_sec)
            self._sync_task = self.loop.create_task(self.sync.run(), name="rate-limit-sync")
        else:
            self.sync.set_limiters(limiters)
