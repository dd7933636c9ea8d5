"""`/pools`: named sets of backends, each with its own algorithm, outlier ejection and health check, and
`/pools/{name}/backends...`: a pool's backends, the same calls as `/backends...` (the default pool's; both
are ``services.admin.backends``' functions).

The default pool always exists and cannot be deleted; its algorithm is `/algorithm`'s (``NS:algorithm``),
its outlier and health_check settings a record of its own in ``NS:pools``. A setting that is null is the
configuration's (the pool's section of ``pools:``, else the top-level one).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from services.admin import backends as pool_backends
from services.admin.backends import (
    JSON,
    LIST_DESCRIPTION,
    LIST_RESPONSES,
    ONE_RESPONSES,
    AddressParam,
    Cursor,
    Force,
    HealthFilter,
    Limit,
    OriginFilter,
    StateFilter,
)
from services.admin.context import CATCH_UP_SEC, AdminContext
from services.admin.listing import Query
from services.admin.problems import InvalidRequest, problem_responses
from services.admin.schemas import (
    BackendCreate,
    BackendOut,
    BackendPatch,
    BackendReplace,
    PoolCreate,
    PoolOut,
    PoolPatch,
    PoolReplace,
    PoolsOut,
    StateChange,
)
from services.admin.snapshot import AdminSnapshot
from shared.config.routing import DEFAULT_POOL, check_name
from shared.logs import get_logger
from shared.mirror import Mirror
from shared.models import PoolSetting
from shared.store import PoolExists, PoolNotFound, Store

log = get_logger("admin")

PoolParam = Annotated[str, PathParameter(description="the pool's name (`default`: the top-level pool)")]


def path_pool(name: str) -> str:
    try:
        check_name("pool", name)
    except ValueError as exc:
        raise InvalidRequest("name", str(exc)) from None
    return name


async def _state(snapshot: AdminSnapshot, store: Store) -> tuple[Mirror, Any]:
    """The pools' view (the snapshot's, else one read from Redis) and the per-pool counts."""
    at = time.time()
    if snapshot.synced:
        return snapshot.mirror, snapshot.listing.pool_counts(at)
    listing = await pool_backends.listing_from_redis(store, snapshot.listing.start_healthy)
    return listing.mirror, listing.pool_counts(at)


async def pools_out(snapshot: AdminSnapshot, store: Store) -> list[PoolOut]:
    if snapshot.synced:
        return snapshot.pools_out(time.time())
    mirror, counts = await _state(snapshot, store)
    names = sorted((set(mirror.pools) | set(counts)) - {DEFAULT_POOL})
    return [
        PoolOut.of(name, mirror.pools.get(name), mirror.algorithm, counts.get(name, (0, 0)))
        for name in [DEFAULT_POOL, *names]
    ]


async def pool_out(snapshot: AdminSnapshot, store: Store, name: str, changed: bool | None = None) -> PoolOut:
    """One pool as the snapshot shows it (read from Redis if the snapshot is not synced)."""
    mirror, counts = await _state(snapshot, store)
    setting = mirror.pools.get(name)
    if setting is None and name != DEFAULT_POOL and name not in counts:  # (backends may name it before its record)
        raise PoolNotFound(name)
    return PoolOut.of(name, setting, mirror.algorithm, counts.get(name, (0, 0)), changed)


async def write_pool(
    snapshot: AdminSnapshot, store: Store, setting: PoolSetting, mode: str, *, algorithm: bool = True
) -> PoolOut:
    """Write ``setting`` (the default pool's algorithm to ``NS:algorithm``) and answer once the snapshot holds it."""
    name = setting.name
    if name == DEFAULT_POOL:
        if mode == "create":
            raise PoolExists(setting)
        current = snapshot.mirror.algorithm if snapshot.synced else await store.get_algorithm()
        same = msgspec.structs.replace(current, updated_at=0.0) == msgspec.structs.replace(
            setting.algorithm, updated_at=0.0
        )
        changed = algorithm and not same and await store.set_algorithm(setting.algorithm)
        record = PoolSetting(name=name, outlier=setting.outlier, health_check=setting.health_check)
        changed = (await store.set_pool(record, mode="put"))[0] or changed
    else:
        changed = (await store.set_pool(setting, mode=mode))[0]  # type: ignore[arg-type]
    log.info("pool set", pool=name, mode=mode, changed=changed)
    await snapshot.caught_up(await store.version(), CATCH_UP_SEC)
    return await pool_out(snapshot, store, name, changed)


async def current_setting(snapshot: AdminSnapshot, store: Store, name: str) -> PoolSetting:
    """The pool's settings as stored (the default pool's with its algorithm); PoolNotFound."""
    if snapshot.synced:
        setting, algorithm = snapshot.mirror.pools.get(name), snapshot.mirror.algorithm
    else:
        setting, algorithm = await store.get_pool(name), await store.get_algorithm()
    if name == DEFAULT_POOL:
        base = setting or PoolSetting(name=name)
        return PoolSetting(name=name, algorithm=algorithm, outlier=base.outlier, health_check=base.health_check)
    if setting is None:
        raise PoolNotFound(name)
    return setting


class PoolsController(Controller):
    path = "/pools"
    tags = ["pools"]

    @get("/", summary="Every pool, the default first", responses=problem_responses(401, 503))
    async def list_pools(self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store]) -> PoolsOut:
        return PoolsOut(pools=await pools_out(snapshot, store))

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a pool",
        description="409 if a pool of that name exists (`default` always does).",
        responses=problem_responses(400, 401, 403, 409, 415, 503),
    )
    async def create_pool(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], data: JSONBody[PoolCreate]
    ) -> PoolOut:
        return await write_pool(snapshot, store, data.to_setting(data.name), "create")

    @get("/{name:str}", summary="One pool", responses=problem_responses(400, 401, 404, 503))
    async def get_pool(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], name: PoolParam
    ) -> PoolOut:
        return await pool_out(snapshot, store, path_pool(name))

    @put(
        "/{name:str}",
        summary="Create or replace a pool's settings",
        description="Every setting: an absent one is the configuration's value. The default pool's algorithm is "
        "`/algorithm`'s.",
        responses=problem_responses(400, 401, 403, 415, 503),
    )
    async def replace_pool(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        name: PoolParam,
        data: JSONBody[PoolReplace],
    ) -> PoolOut:
        name = path_pool(name)
        if data.name is not None and data.name != name:
            raise InvalidRequest("name", f"the body names {data.name} but the path {name}")
        return await write_pool(snapshot, store, data.to_setting(name), "put")

    @patch(
        "/{name:str}",
        summary="Change some of a pool's settings",
        description="The settings given replace the pool's (`null`: back to the configuration's value).",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def patch_pool(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        name: PoolParam,
        data: JSONBody[PoolPatch],
    ) -> PoolOut:
        name = path_pool(name)
        current = await current_setting(snapshot, store, name)
        algorithm = not isinstance(data.algorithm, msgspec.UnsetType)
        return await write_pool(snapshot, store, data.apply(current), "update", algorithm=algorithm)

    @delete(
        "/{name:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a pool",
        description="409 while backends are in it or the stored route table sends requests to it (the problem "
        "says which); the default pool cannot be deleted.",
        responses=problem_responses(400, 401, 403, 404, 409, 415, 503),
    )
    async def delete_pool(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], name: PoolParam
    ) -> None:
        removed = await store.remove_pool(path_pool(name))
        log.info("pool removed", pool=removed.name)
        await snapshot.caught_up(await store.version(), CATCH_UP_SEC)


class PoolBackendsController(Controller):
    """A pool's backends: the calls of `/backends...`, in the pool named by the path."""

    path = "/pools/{pool:str}/backends"
    tags = ["pools"]

    @get("/", summary="List a pool's backends", description=LIST_DESCRIPTION, media_type=JSON, responses=LIST_RESPONSES)
    async def list_backends(
        self,
        request: Request[Any, Any, Any],
        ctx: NamedDependency[AdminContext],
        pool: PoolParam,
        health: HealthFilter = None,
        admin_state: StateFilter = None,
        origin: OriginFilter = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> Response[bytes]:
        name = path_pool(pool)
        return await pool_backends.list_backends(
            request, ctx, name, Query(health, admin_state, origin, limit, cursor, name)
        )

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Add a backend to a pool",
        description="409 if the address is taken (in this pool or another: an address serves one pool).",
        responses=problem_responses(400, 401, 403, 404, 409, 415, 503),
    )
    async def add_backend(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        data: JSONBody[BackendCreate],
    ) -> BackendOut:
        return await pool_backends.add_backend(snapshot, store, path_pool(pool), data)

    @get("/{address:str}", summary="One backend of a pool", media_type=JSON, responses=ONE_RESPONSES)
    async def get_backend(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        address: AddressParam,
    ) -> Response[bytes]:
        return await pool_backends.get_backend(snapshot, store, path_pool(pool), address)

    @put("/{address:str}", summary="Set a backend's weight", responses=problem_responses(400, 401, 403, 404, 415, 503))
    async def replace_backend(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        address: AddressParam,
        data: JSONBody[BackendReplace],
    ) -> BackendOut:
        return await pool_backends.replace_backend(snapshot, store, path_pool(pool), address, data)

    @patch(
        "/{address:str}",
        summary="Change some of a backend's fields",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def patch_backend(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        address: AddressParam,
        data: JSONBody[BackendPatch],
    ) -> BackendOut:
        return await pool_backends.patch_backend(snapshot, store, path_pool(pool), address, data)

    @delete(
        "/{address:str}/override",
        status_code=HTTP_200_OK,
        summary="Clear the operator override",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def clear_override(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        address: AddressParam,
    ) -> BackendOut:
        return await pool_backends.clear_override(snapshot, store, path_pool(pool), address)

    @delete(
        "/{address:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove a backend from a pool",
        description="Backends found by discovery (origin static, docker, kubernetes) need ?force=true.",
        responses=problem_responses(400, 401, 403, 404, 409, 415, 503),
    )
    async def remove_backend(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        address: AddressParam,
        force: Force = False,
    ) -> None:
        await pool_backends.remove_backend(snapshot, store, path_pool(pool), address, force)

    @post(
        "/{address:str}/drain",
        status_code=HTTP_200_OK,
        summary="Drain: no new traffic, in-flight finishes",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def drain(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        address: AddressParam,
    ) -> StateChange:
        return await pool_backends.set_state(snapshot, store, path_pool(pool), address, "draining")

    @post(
        "/{address:str}/enable",
        status_code=HTTP_200_OK,
        summary="Enable: take new traffic again",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def enable(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        address: AddressParam,
    ) -> StateChange:
        return await pool_backends.set_state(snapshot, store, path_pool(pool), address, "enabled")

    @post(
        "/{address:str}/disable",
        status_code=HTTP_200_OK,
        summary="Disable: no traffic at all",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def disable(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        pool: PoolParam,
        address: AddressParam,
    ) -> StateChange:
        return await pool_backends.set_state(snapshot, store, path_pool(pool), address, "disabled")


ROUTES = [PoolsController, PoolBackendsController]
