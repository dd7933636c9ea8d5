"""`/routes`: the route table, read and replaced whole.

`PUT /routes` checks the new table before anything is written: each rule as the configuration's are
(``RouteConfig``: name, host pattern, path prefix, methods, headers, rewrite_host), then the table
(``shared.config.routing.check_route_table``: unique names, pools that exist - `default` and the stored
pools - and no rule that can never match). A table that fails is a 422 problem naming the rule and its
field (``routes[2].pool``), and the running table is untouched. The store swaps the table in one write
(one ``routes`` event): every proxy goes from the old table to the new one, never a mix.
"""

from __future__ import annotations

from litestar import get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from services.admin.context import CATCH_UP_SEC, AdminContext
from services.admin.problems import Unprocessable, problem_responses
from services.admin.schemas import RoutesOut, RoutesReplace
from services.admin.snapshot import AdminSnapshot
from shared.config import RouteConfig
from shared.config.errors import named_field
from shared.config.routing import DEFAULT_POOL, RouteTableError, check_route_table
from shared.logs import get_logger
from shared.models import RouteTableSetting
from shared.store import PoolNotFound, Store

log = get_logger("admin")


def routes_out(ctx: AdminContext, table: RouteTableSetting | None, changed: bool | None = None) -> RoutesOut:
    if table is None:
        config = ctx.config
        return RoutesOut(
            routes=config.routes, default_pool=config.default_pool, source="config", updated_at=0.0, changed=changed
        )
    return RoutesOut(
        routes=table.routes,
        default_pool=table.default_pool,
        source="store",
        updated_at=table.updated_at,
        changed=changed,
    )


def checked_table(data: RoutesReplace, pools: set[str]) -> RouteTableSetting:
    """The table ``data`` describes, each rule checked and normalized, then the whole; Unprocessable naming the
    rule and field otherwise."""
    routes: list[RouteConfig] = []
    for i, rule in enumerate(data.routes):
        try:
            routes.append(
                RouteConfig(
                    name=rule.name,
                    pool=rule.pool,
                    host=rule.host,
                    path_prefix=rule.path_prefix,
                    methods=list(rule.methods),
                    headers=dict(rule.headers),
                    strip_prefix=rule.strip_prefix,
                    rewrite_host=rule.rewrite_host,
                )
            )
        except ValueError as exc:
            named = named_field(str(exc))
            field, detail = (named[0] + named[1], named[2]) if named else ("", str(exc))
            raise Unprocessable(f"routes[{i}].{field}" if field else f"routes[{i}]", detail) from None
    try:
        check_route_table(routes, pools, data.default_pool)
    except RouteTableError as exc:
        raise Unprocessable(exc.field, exc.problem) from None
    return RouteTableSetting(routes=routes, default_pool=data.default_pool)


@get(
    "/routes",
    tags=["routes"],
    summary="The route table in force",
    description="The ordered rules sending requests to pools, and `default_pool` (the pool of a request no rule "
    'matches; "" = 404). `source`: "store" (set through this API, or seeded from the configuration) or "config" '
    "(nothing stored yet: the configuration's table is in force).",
    responses=problem_responses(401, 503),
)
async def get_routes(ctx: NamedDependency[AdminContext]) -> RoutesOut:
    snapshot = ctx.snapshot
    table = snapshot.mirror.routes if snapshot.synced else await ctx.require_store().get_routes()
    return routes_out(ctx, table)


@put(
    "/routes",
    tags=["routes"],
    summary="Replace the whole route table atomically",
    description="Checked first: each rule (name, host, path_prefix, methods, headers, rewrite_host), then the "
    "table (unique names, pools that exist, no rule that can never match). A table that fails is a 422 whose "
    "`field` names the rule and its field (`routes[2].pool`); the running table is untouched.",
    responses=problem_responses(400, 401, 403, 404, 415, 422, 503),
)
async def put_routes(
    ctx: NamedDependency[AdminContext],
    snapshot: NamedDependency[AdminSnapshot],
    store: NamedDependency[Store],
    data: JSONBody[RoutesReplace],
) -> RoutesOut:
    stored = snapshot.mirror.pools if snapshot.synced else await store.get_pools()
    table = checked_table(data, {DEFAULT_POOL, *stored})
    try:
        changed = await store.set_routes(table)
    except PoolNotFound as exc:  # removed since it was read: the store refused the table
        at = next((f"routes[{i}].pool" for i, r in enumerate(table.routes) if r.pool == exc.name), "default_pool")
        raise Unprocessable(at, f"pool {exc.name!r} does not exist") from None
    log.info("route table set", routes=len(table.routes), default_pool=table.default_pool, changed=changed)
    if await snapshot.caught_up(await store.version(), CATCH_UP_SEC) and snapshot.mirror.routes is not None:
        return routes_out(ctx, snapshot.mirror.routes, changed)
    return routes_out(ctx, await store.get_routes(), changed)


ROUTES = [get_routes, put_routes]
