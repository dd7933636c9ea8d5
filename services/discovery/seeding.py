"""Pools and routes in the store: the configuration's seeded once, a source's own kept in step.

The leader (``services.discovery.leader``) runs :meth:`Seeder.apply` before every reconcile of the
backends, so the pools its backends name exist by the time they are written:

- **Pools** (create-if-absent): every pool of the configuration's ``pools:`` (with its algorithm; its
  ``health_check`` and ``outlier`` stay ``None`` in the record, meaning the configuration's value),
  the pools of ``discovery.kubernetes.services``, and whatever pools the source asks for (a Docker
  label ``lb.pool``). A pool that exists is never rewritten, so an operator's change through the API
  survives a restart; a pool no longer in the file is not deleted (the store is the truth).
- **The route table**: while the store holds none, the configuration's ``routes`` / ``default_pool``
  are written once (nothing is written when the configuration has neither and the source wants no
  route: the proxies' fallback to the configuration is the same table).
- **Discovery's own routes** (a source that publishes routes, Docker): routes whose name starts with
  :data:`OWNED_PREFIX` are discovery's; the stored table's other routes are kept as they are (an
  operator's), discovery's are replaced by the source's current ones, appended after them in name
  order. Deterministic, so a resync that finds the same containers writes nothing. A table the checks
  refuse (say a discovered route shadowed by an operator's with the same host and prefix) is not
  written; the refusal is logged once and the stored table stays.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import DEFAULT_POOL, Config, RouteConfig, RouteTableError
from shared.config.routing import check_route_table
from shared.logs import get_logger
from shared.models import AlgorithmSetting, PoolSetting, RouteTableSetting
from shared.store import Lease, Store
from shared.store.store import PoolExists, PoolNotFound

log = get_logger("discovery.seeding")

# Routes named so are discovery's (created and removed by it); every other route is an operator's.
OWNED_PREFIX = "docker-"


def owned_route(name: str) -> bool:
    return name.startswith(OWNED_PREFIX)


@dataclass(frozen=True)
class DesiredSettings:
    """What a source wants in the store besides backends: pools that must exist, (``routes`` not None) the
    whole set of discovery-owned routes, and (``config`` not None: the static source's reloaded file) the
    configuration to seed from from now on."""

    pools: tuple[str, ...] = ()
    routes: tuple[RouteConfig, ...] | None = None
    config: Config | None = None


def config_pools(config: Config) -> dict[str, PoolSetting]:
    """The pools a configuration names, as created in the store when absent (``default`` excluded)."""
    out = {
        name: PoolSetting(name=name, algorithm=AlgorithmSetting(name=pool.algorithm))
        for name, pool in config.pools.items()
    }
    for entry in config.discovery.kubernetes.services if config.discovery.type == "kubernetes" else ():
        if entry.pool != DEFAULT_POOL and entry.pool not in out:
            out[entry.pool] = PoolSetting(name=entry.pool)
    return out


class Seeder:
    """Seeds the store from ``config`` and keeps a source's pools and routes in it (see the module docs).
    A source's settings may carry a new ``config`` (the static source's reload): its new pools are created
    at that pass."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.created = 0  # pools created (tests, logs)
        self.route_writes = 0  # route tables written
        self._refused = ""  # the last refusal logged

    async def apply(self, store: Store, settings: DesiredSettings | None, fence: Lease | None) -> None:
        """One pass; raises the store's errors (``Fenced`` included) for the leader to handle."""
        settings = settings or DesiredSettings()
        if settings.config is not None:
            self.config = settings.config
        wanted = config_pools(self.config)
        for name in settings.pools:
            wanted.setdefault(name, PoolSetting(name=name))
        for route in settings.routes or ():
            wanted.setdefault(route.pool, PoolSetting(name=route.pool))
        wanted.pop(DEFAULT_POOL, None)
        stored = await store.get_pools()
        for name in sorted(wanted.keys() - stored.keys()):
            try:
                _, record = await store.set_pool(wanted[name], mode="create", fence=fence)
            except PoolExists as exc:  # an operator's create won the race: theirs stays
                record = exc.pool
            else:
                self.created += 1
                log.info("pool created", pool=name, algorithm=record.algorithm.name)
            stored[name] = record
        await self._routes(store, settings.routes, set(stored) | {DEFAULT_POOL}, fence)

    async def _routes(
        self, store: Store, owned: tuple[RouteConfig, ...] | None, pools: set[str], fence: Lease | None
    ) -> None:
        current = await store.get_routes()
        if current is None:
            base = list(self.config.routes)
            default_pool = self.config.default_pool
            if not base and not owned and not default_pool:
                return  # the configuration's table (none) is what the proxies use anyway
            if not base and not default_pool:
                default_pool = self.config.unmatched_pool  # no routes of the file: the rest stays "default"'s
        else:
            if owned is None:
                return  # this source has no routes of its own: the stored table is the operator's
            base = [r for r in current.routes if not owned_route(r.name)]
            default_pool = current.default_pool
        routes = base + sorted(owned or (), key=lambda r: r.name)
        if current is not None and current.default_pool == default_pool and current.routes == routes:
            return
        try:
            check_route_table(routes, pools, default_pool)
        except RouteTableError as exc:
            if str(exc) != self._refused:
                log.warning("route table not written: discovered routes refused", error=str(exc))
                self._refused = str(exc)
            return
        try:
            await store.set_routes(RouteTableSetting(routes=routes, default_pool=default_pool), fence=fence)
        except PoolNotFound as exc:  # deleted since we read: the next pass creates it again
            log.warning("route table not written: a pool vanished", pool=exc.name)
            return
        self._refused = ""
        self.route_writes += 1
        log.info(
            "route table written",
            routes=len(routes),
            discovered=sum(1 for r in routes if owned_route(r.name)),
            seeded=current is None,
        )
