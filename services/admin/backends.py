"""`/backends`: the original GoBalancer API (list, add, get, update, delete) and the additions beyond it.

Reads come from the admin's snapshot (``AdminSnapshot``; Redis only while it is not synced); writes
go to the store and answer once the snapshot holds them (see ``present_written``).

Every backend is in one pool. ``/backends...`` is the default pool's, ``/pools/{name}/backends...``
(``services.admin.pools``) another's: both are the functions below (``pool`` their first argument); a
backend of another pool is not found there (404 naming its pool).
"""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from services.admin.context import CATCH_UP_SEC, AdminContext
from services.admin.listing import GZIP_MIN_BYTES, Listing, Page, Query
from services.admin.problems import BackendInOtherPool, InvalidRequest, problem_responses
from services.admin.schemas import BackendCreate, BackendOut, BackendPatch, BackendReplace, StateChange
from services.admin.snapshot import AdminSnapshot
from shared.addresses import normalize_address
from shared.config.routing import DEFAULT_POOL
from shared.logs import get_logger
from shared.mirror import Mirror
from shared.models import AdminState, Backend, BackendView, HealthStatus, Origin
from shared.store import BackendNotFound, PoolNotFound, Store

log = get_logger("admin")

JSON = "application/json"

AddressParam = Annotated[
    str,
    PathParameter(description="host:port of the backend; an IPv6 host in brackets, URL-encoded: %5B%3A%3A1%5D%3A80"),
]


def path_address(raw: str) -> str:
    """Validate and normalize an address taken from the path; 400 naming `address` otherwise."""
    try:
        return normalize_address(raw)
    except ValueError as exc:
        raise InvalidRequest("address", str(exc)) from None


async def listing_from_redis(store: Store, start_healthy: bool) -> Listing:
    """The backends read from Redis now (the snapshot is not synced): raises while Redis is down."""
    mirror = Mirror()
    mirror.apply(await store.snapshot())
    listing = Listing(mirror, start_healthy=start_healthy)
    listing.set_inflight(await store.global_inflight())
    return listing


async def present_written(snapshot: AdminSnapshot, store: Store, backend: Backend) -> BackendOut:
    """A backend just written, as the snapshot shows it once it holds the write (read-your-writes);
    read from Redis if it does not within CATCH_UP_SEC (the write itself is done)."""
    if await snapshot.caught_up(await store.version(), CATCH_UP_SEC):
        snapshot.listing.set_inflight(await store.global_inflight())  # (the in-flight count now, for a drain)
        out = snapshot.listing.out(backend.address, time.time())
        if out is not None:
            return out
    view = await store.get_backend(backend.address) or BackendView(backend=backend)
    [out] = BackendOut.of_views([view], await store.global_inflight(), start_healthy=snapshot.listing.start_healthy)
    return out


def _not_modified(request: Request[Any, Any, Any], etag: str) -> bool:
    given = request.headers.get("if-none-match")
    return given is not None and (given.strip() == "*" or etag in (t.strip() for t in given.split(",")))


def _page_headers(request: Request[Any, Any, Any], page: Page, query: Query) -> dict[str, str]:
    if page.next_cursor is None:
        return {}
    params = {k: v for k, v in query._asdict().items() if v is not None and k not in ("cursor", "pool")}
    params["cursor"] = page.next_cursor
    return {"Link": f'<{request.url.path}?{urlencode(params)}>; rel="next"', "X-Next-Cursor": page.next_cursor}


async def check_pool(snapshot: AdminSnapshot, store: Store, pool: str) -> None:
    """PoolNotFound unless ``pool`` exists (the default pool always does)."""
    if pool == DEFAULT_POOL:
        return
    if snapshot.synced and pool in snapshot.mirror.pools:
        return
    if await store.get_pool(pool) is None:
        raise PoolNotFound(pool)


async def in_pool(snapshot: AdminSnapshot, store: Store, pool: str, address: str) -> BackendView:
    """The backend at ``address``: BackendNotFound if there is none, BackendInOtherPool if it is not ``pool``'s."""
    view = snapshot.mirror.backends.get(address) if snapshot.synced else await store.get_backend(address)
    if view is None:
        raise BackendNotFound(address)
    if view.backend.pool != pool:
        raise BackendInOtherPool(address, pool, view.backend.pool)
    return view


async def list_backends(request: Request[Any, Any, Any], ctx: AdminContext, pool: str, query: Query) -> Response[bytes]:
    at = time.time()
    snapshot = ctx.snapshot
    if not snapshot.synced:
        store = ctx.require_store()
        await check_pool(snapshot, store, pool)
        listing = await listing_from_redis(store, snapshot.listing.start_healthy)
        page = listing.page(query, at)
        return Response(page.body, media_type=JSON, headers=_page_headers(request, page, query))
    listing = snapshot.listing
    if pool != DEFAULT_POOL and pool not in snapshot.mirror.pools and not listing.pool_order(pool):
        await check_pool(snapshot, ctx.require_store(), pool)
    listing.expire(at)
    page = listing.page(query, at)
    gzipped = len(page.body) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("accept-encoding", "")
    etag = listing.etag[:-1] + '-gz"' if gzipped else listing.etag  # (one ETag per representation)
    headers = {"ETag": etag, "Vary": "Accept-Encoding"}
    if _not_modified(request, etag):
        return Response(b"", status_code=304, media_type=JSON, headers=headers)
    headers.update(_page_headers(request, page, query))
    if not gzipped:
        return Response(page.body, media_type=JSON, headers=headers)
    headers["Content-Encoding"] = "gzip"
    return Response(await listing.gzipped(page.body), media_type=JSON, headers=headers)


async def add_backend(snapshot: AdminSnapshot, store: Store, pool: str, data: BackendCreate) -> BackendOut:
    await check_pool(snapshot, store, pool)
    created = await store.create_backend(
        Backend(address=data.address, weight=data.weight, state=data.state, origin="api", pool=pool)
    )
    log.info("backend added", address=created.address, weight=created.weight, state=created.state, pool=pool)
    return await present_written(snapshot, store, created)


async def get_backend(snapshot: AdminSnapshot, store: Store, pool: str, address: str) -> Response[bytes]:
    addr = path_address(address)
    listing = snapshot.listing if snapshot.synced else await listing_from_redis(store, snapshot.listing.start_healthy)
    view = listing.mirror.backends.get(addr)
    if view is not None and view.backend.pool != pool:
        raise BackendInOtherPool(addr, pool, view.backend.pool)
    at = time.time()
    listing.expire(at)
    body = listing.fragment(addr, at)  # (the encoded JSON the list holds too)
    if body is None:
        raise BackendNotFound(addr)
    return Response(body, media_type=JSON)


async def replace_backend(
    snapshot: AdminSnapshot, store: Store, pool: str, address: str, data: BackendReplace
) -> BackendOut:
    addr = path_address(address)
    if data.address is not None and data.address != addr:
        raise InvalidRequest("address", f"the body names {data.address} but the path {addr}")
    await in_pool(snapshot, store, pool, addr)
    updated = (await store.update_backend(addr, {"weight": data.weight})).backend
    log.info("backend weight set", address=updated.address, weight=updated.weight)
    return await present_written(snapshot, store, updated)


async def patch_backend(
    snapshot: AdminSnapshot, store: Store, pool: str, address: str, data: BackendPatch
) -> BackendOut:
    changes: dict[str, Any] = {}
    if data.weight is not None:
        changes["weight"] = data.weight
    if data.state is not None:
        changes["state"] = data.state
    addr = path_address(address)
    await in_pool(snapshot, store, pool, addr)
    updated = (await store.update_backend(addr, changes)).backend
    log.info("backend updated", address=updated.address, **changes)
    return await present_written(snapshot, store, updated)


async def clear_override(snapshot: AdminSnapshot, store: Store, pool: str, address: str) -> BackendOut:
    addr = path_address(address)
    await in_pool(snapshot, store, pool, addr)
    result = await store.clear_override(addr)
    log.info("backend override cleared", address=result.backend.address, changed=result.outcome != "unchanged")
    return await present_written(snapshot, store, result.backend)


async def remove_backend(snapshot: AdminSnapshot, store: Store, pool: str, address: str, force: bool) -> None:
    addr = path_address(address)
    await in_pool(snapshot, store, pool, addr)
    removed = await store.remove_backend(addr, guard_origin=None if force else "api")
    log.info("backend removed", address=removed.address, origin=removed.origin, forced=force)
    await snapshot.caught_up(await store.version(), CATCH_UP_SEC)


async def set_state(snapshot: AdminSnapshot, store: Store, pool: str, address: str, target: AdminState) -> StateChange:
    addr = path_address(address)
    await in_pool(snapshot, store, pool, addr)
    result = await store.update_backend(addr, {"state": target})
    log.info("backend state set", address=addr, state=target)
    out = await present_written(snapshot, store, result.backend)
    return StateChange(
        address=addr,
        state=result.backend.state,
        changed=result.outcome != "unchanged",
        in_flight=out.conn_count,
        backend=out,
    )


LIST_DESCRIPTION = (
    "Every backend with health, state, origin and global in-flight, in address order. Filters: `health`, "
    "`state`, `origin`. Pages: `limit`, then `cursor` = the last address of the previous page (also in "
    "the `X-Next-Cursor` header and a `Link: rel=next`); pages never shift when backends come and go. "
    "`ETag` / `If-None-Match` answer 304 while nothing changed."
)
LIST_RESPONSES = {
    200: ResponseSpec(data_container=list[BackendOut], description="The backends", generate_examples=False),
    **problem_responses(400, 401, 404, 503),
}
ONE_RESPONSES = {
    200: ResponseSpec(data_container=BackendOut, description="The backend", generate_examples=False),
    **problem_responses(400, 401, 404, 503),
}
HealthFilter = Annotated[HealthStatus | None, QueryParameter(description="only backends with this health")]
StateFilter = Annotated[AdminState | None, QueryParameter(name="state", description="only backends in this state")]
OriginFilter = Annotated[Origin | None, QueryParameter(description="only backends from this origin")]
Limit = Annotated[int | None, QueryParameter(ge=1, le=10000, description="at most this many")]
Cursor = Annotated[str | None, QueryParameter(max_length=300, description="start after this address (a page's last)")]
Force = Annotated[bool, QueryParameter(description="also remove a backend found by discovery")]


class BackendsController(Controller):
    """The default pool's backends (the original API's paths)."""

    path = "/backends"
    tags = ["backends"]

    @get(
        "/",
        summary="List the default pool's backends",
        description=LIST_DESCRIPTION,
        media_type=JSON,
        responses=LIST_RESPONSES,
    )
    async def list_backends(
        self,
        request: Request[Any, Any, Any],
        # (One dependency, not the store and the snapshot: Litestar resolves two or more in a task group
        # of their own, ~25% of a cached read's CPU.)
        ctx: NamedDependency[AdminContext],
        health: HealthFilter = None,
        admin_state: StateFilter = None,
        origin: OriginFilter = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> Response[bytes]:
        query = Query(health, admin_state, origin, limit, cursor, DEFAULT_POOL)
        return await list_backends(request, ctx, DEFAULT_POOL, query)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Add a backend to the default pool",
        responses=problem_responses(400, 401, 403, 409, 415, 503),
    )
    async def add_backend(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], data: JSONBody[BackendCreate]
    ) -> BackendOut:
        return await add_backend(snapshot, store, DEFAULT_POOL, data)

    @get("/{address:str}", summary="One backend", media_type=JSON, responses=ONE_RESPONSES)
    async def get_backend(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], address: AddressParam
    ) -> Response[bytes]:
        return await get_backend(snapshot, store, DEFAULT_POOL, address)

    @put(
        "/{address:str}",
        summary="Set a backend's weight (the original API's update)",
        description="On a backend found by discovery the weight is kept as an operator override (see `override`).",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def replace_backend(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        address: AddressParam,
        data: JSONBody[BackendReplace],
    ) -> BackendOut:
        return await replace_backend(snapshot, store, DEFAULT_POOL, address, data)

    @patch(
        "/{address:str}",
        summary="Change some of a backend's fields",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def patch_backend(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        address: AddressParam,
        data: JSONBody[BackendPatch],
    ) -> BackendOut:
        return await patch_backend(snapshot, store, DEFAULT_POOL, address, data)

    @delete(
        "/{address:str}/override",
        status_code=HTTP_200_OK,
        summary="Clear the operator override",
        description="The discovery source's values for the overridden fields are in force again.",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def clear_override(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], address: AddressParam
    ) -> BackendOut:
        return await clear_override(snapshot, store, DEFAULT_POOL, address)

    @delete(
        "/{address:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove a backend",
        description="Backends found by discovery (origin static, docker, kubernetes) need ?force=true.",
        responses=problem_responses(400, 401, 403, 404, 409, 415, 503),
    )
    async def remove_backend(
        self,
        snapshot: NamedDependency[AdminSnapshot],
        store: NamedDependency[Store],
        address: AddressParam,
        force: Force = False,
    ) -> None:
        await remove_backend(snapshot, store, DEFAULT_POOL, address, force)

    @post(
        "/{address:str}/drain",
        status_code=HTTP_200_OK,
        summary="Drain: no new traffic, in-flight finishes",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def drain(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], address: AddressParam
    ) -> StateChange:
        return await set_state(snapshot, store, DEFAULT_POOL, address, "draining")

    @post(
        "/{address:str}/enable",
        status_code=HTTP_200_OK,
        summary="Enable: take new traffic again",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def enable(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], address: AddressParam
    ) -> StateChange:
        return await set_state(snapshot, store, DEFAULT_POOL, address, "enabled")

    @post(
        "/{address:str}/disable",
        status_code=HTTP_200_OK,
        summary="Disable: no traffic at all",
        responses=problem_responses(400, 401, 403, 404, 415, 503),
    )
    async def disable(
        self, snapshot: NamedDependency[AdminSnapshot], store: NamedDependency[Store], address: AddressParam
    ) -> StateChange:
        return await set_state(snapshot, store, DEFAULT_POOL, address, "disabled")
