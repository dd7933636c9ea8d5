"""`GET/PUT/DELETE /rate-limits`: the rate-limit rules every proxy applies, changed live.

The rules live in the store as one versioned document (``shared.store.rate_limits``); while there is none,
the config file's ``rate_limits.rules`` are in force (``source: "config"``). A PUT replaces the whole table;
every proxy swaps it in within a few ms of the write (its ``rate_limits`` event), keeping the counts of the
rules it keeps. A table that does not validate is refused with a problem naming the field
(``rules[1].rate``) and the table in force is untouched. DELETE goes back to the config file's rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec
from litestar import delete, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from services.admin.context import AdminContext
from services.admin.problems import InvalidRequest, problem_responses
from services.admin.schemas import RequestBody
from shared.config import Config
from shared.config.limits import RateLimitRule, check_rule_targets, check_unique_names
from shared.logs import get_logger
from shared.store import Store
from shared.store.rate_limits import get_rate_limits, set_rate_limits

log = get_logger("admin")


class RateLimitsUpdate(RequestBody):
    """`PUT /rate-limits`: the whole table (an empty list: no rate limits at all, whatever the config file says)."""

    rules: list[RateLimitRule]

    def __post_init__(self) -> None:
        check_unique_names(self.rules, "rules[{i}].name")


class RateLimitsOut(msgspec.Struct, kw_only=True):
    # "store": the table written through this API; "config": the config file's (none written, or deleted).
    source: Literal["store", "config"]
    rules: list[RateLimitRule]
    # When the store's table was written (null for the config file's).
    updated_at: float | None = None
    # The state's version when read (after a change: the version the change produced).
    version: int = 0
    # PUT/DELETE: whether anything changed (the same table again writes nothing).
    changed: bool | None = None


def check_targets(
    config: Config, rules: list[RateLimitRule], stored_pools: Iterable[str] = (), stored_routes: list[str] | None = None
) -> None:
    """Every ``applies_to: pool:NAME`` / ``route:NAME`` names a pool or route that exists: the config's pools
    and the store's, the store's route table (else the config's)."""
    routes = stored_routes if stored_routes is not None else [r.name for r in config.routes]
    try:
        check_rule_targets(rules, {*config.pool_names(), *stored_pools}, routes)
    except ValueError as exc:
        field, _, detail = str(exc).partition(": ")
        raise InvalidRequest(field, detail) from None


async def _current(ctx: AdminContext, store: Store, changed: bool | None = None) -> RateLimitsOut:
    doc, version = await get_rate_limits(store)
    if doc is None:
        return RateLimitsOut(source="config", rules=ctx.config.rate_limits.rules, version=version, changed=changed)
    return RateLimitsOut(source="store", rules=doc.rules, updated_at=doc.updated_at, version=version, changed=changed)


@get(
    "/rate-limits",
    tags=["rate-limits"],
    summary="The rate-limit rules in force",
    responses=problem_responses(401, 503),
)
async def get_limits(ctx: NamedDependency[AdminContext], store: NamedDependency[Store]) -> RateLimitsOut:
    return await _current(ctx, store)


@put(
    "/rate-limits",
    tags=["rate-limits"],
    summary="Replace every proxy's rate-limit rules live",
    responses=problem_responses(400, 401, 403, 415, 503),
)
async def put_limits(
    ctx: NamedDependency[AdminContext], store: NamedDependency[Store], data: JSONBody[RateLimitsUpdate]
) -> RateLimitsOut:
    table = await store.get_routes()
    stored_routes = [r.name for r in table.routes] if table is not None else None
    check_targets(ctx.config, data.rules, await store.get_pools(), stored_routes)
    changed, _ = await set_rate_limits(store, data.rules)
    log.info("rate limits set", rules=[r.name for r in data.rules], changed=changed)
    return await _current(ctx, store, changed)


@delete(
    "/rate-limits",
    tags=["rate-limits"],
    summary="Go back to the config file's rate-limit rules",
    status_code=200,
    responses=problem_responses(401, 403, 503),
)
async def delete_limits(ctx: NamedDependency[AdminContext], store: NamedDependency[Store]) -> RateLimitsOut:
    changed, _ = await set_rate_limits(store, None)
    log.info("rate limits back to the config file's", changed=changed)
    return await _current(ctx, store, changed)


ROUTES = [get_limits, put_limits, delete_limits]
