"""`/backends`: the original GoBalancer API (list, add, get, update, delete) and the additions beyond it."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from services.admin.context import context_of
from services.admin.problems import InvalidRequest, problem_responses
from services.admin.schemas import BackendCreate, BackendOut, BackendPatch, BackendReplace, StateChange
from shared.addresses import normalize_address
from shared.logs import get_logger
from shared.models import AdminState, Backend, BackendView
from shared.store import BackendNotFound, Store

log = get_logger("admin")

AddressParam = Annotated[
    str,
    Parameter(description="host:port of the backend; an IPv6 host in brackets, URL-encoded: %5B%3A%3A1%5D%3A80"),
]


def path_address(raw: str) -> str:
    """Validate and normalize an address taken from the path; 400 naming `address` otherwise."""
    try:
        return normalize_address(raw)
    except ValueError as exc:
        raise InvalidRequest("address", str(exc)) from None


async def present(store: Store, view: BackendView, *, start_healthy: bool) -> BackendOut:
    [out] = BackendOut.of_views([view], await store.global_inflight(), start_healthy=start_healthy)
    return out


async def present_written(store: Store, backend: Backend, *, start_healthy: bool) -> BackendOut:
    """The view of a backend just written (health and ejection read back; the write itself is done)."""
    view = await store.get_backend(backend.address) or BackendView(backend=backend)
    return await present(store, view, start_healthy=start_healthy)


class BackendsController(Controller):
    path = "/backends"
    tags = ["backends"]

    @get(
        "/",
        summary="List backends",
        description="Every backend with health, state, origin and global in-flight.",
        responses=problem_responses(401, 503),
    )
    async def list_backends(self, state: State) -> list[BackendOut]:
        ctx = context_of(state)
        store = ctx.require_store()
        views = await store.list_backends()
        return BackendOut.of_views(views, await store.global_inflight(), start_healthy=ctx.start_healthy)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Add a backend",
        opt={"body": BackendCreate},
        responses=problem_responses(400, 401, 409, 503),
    )
    async def add_backend(self, state: State, data: JSONBody[BackendCreate]) -> BackendOut:
        ctx = context_of(state)
        store = ctx.require_store()
        created = await store.create_backend(
            Backend(address=data.address, weight=data.weight, state=data.state, origin="api")
        )
        log.info("backend added", address=created.address, weight=created.weight, state=created.state)
        return await present_written(store, created, start_healthy=ctx.start_healthy)

    @get("/{address:str}", summary="One backend", responses=problem_responses(400, 401, 404, 503))
    async def get_backend(self, state: State, address: AddressParam) -> BackendOut:
        ctx = context_of(state)
        store = ctx.require_store()
        addr = path_address(address)
        view = await store.get_backend(addr)
        if view is None:
            raise BackendNotFound(addr)
        return await present(store, view, start_healthy=ctx.start_healthy)

    @put(
        "/{address:str}",
        summary="Set a backend's weight (the original API's update)",
        description="On a backend found by discovery the weight is kept as an operator override (see `override`).",
        opt={"body": BackendReplace},
        responses=problem_responses(400, 401, 404, 503),
    )
    async def replace_backend(self, state: State, address: AddressParam, data: JSONBody[BackendReplace]) -> BackendOut:
        ctx = context_of(state)
        store = ctx.require_store()
        addr = path_address(address)
        if data.address is not None and data.address != addr:
            raise InvalidRequest("address", f"the body names {data.address} but the path {addr}")
        updated = (await store.update_backend(addr, {"weight": data.weight})).backend
        log.info("backend weight set", address=updated.address, weight=updated.weight)
        return await present_written(store, updated, start_healthy=ctx.start_healthy)

    @patch(
        "/{address:str}",
        summary="Change some of a backend's fields",
        opt={"body": BackendPatch},
        responses=problem_responses(400, 401, 404, 503),
    )
    async def patch_backend(self, state: State, address: AddressParam, data: JSONBody[BackendPatch]) -> BackendOut:
        ctx = context_of(state)
        store = ctx.require_store()
        changes: dict[str, Any] = {}
        if data.weight is not None:
            changes["weight"] = data.weight
        if data.state is not None:
            changes["state"] = data.state
        updated = (await store.update_backend(path_address(address), changes)).backend
        log.info("backend updated", address=updated.address, **changes)
        return await present_written(store, updated, start_healthy=ctx.start_healthy)

    @delete(
        "/{address:str}/override",
        status_code=HTTP_200_OK,
        summary="Clear the operator override",
        description="The discovery source's values for the overridden fields are in force again.",
        responses=problem_responses(400, 401, 404, 503),
    )
    async def clear_override(self, state: State, address: AddressParam) -> BackendOut:
        ctx = context_of(state)
        store = ctx.require_store()
        result = await store.clear_override(path_address(address))
        log.info("backend override cleared", address=result.backend.address, changed=result.outcome != "unchanged")
        return await present_written(store, result.backend, start_healthy=ctx.start_healthy)

    @delete(
        "/{address:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove a backend",
        description="Backends found by discovery (origin static, docker, kubernetes) need ?force=true.",
        responses=problem_responses(400, 401, 404, 409, 503),
    )
    async def remove_backend(
        self,
        state: State,
        address: AddressParam,
        force: Annotated[bool, Parameter(description="also remove a backend found by discovery")] = False,
    ) -> None:
        store = context_of(state).require_store()
        removed = await store.remove_backend(path_address(address), guard_origin=None if force else "api")
        log.info("backend removed", address=removed.address, origin=removed.origin, forced=force)

    async def _set_state(self, state: State, address: str, target: AdminState) -> StateChange:
        ctx = context_of(state)
        store = ctx.require_store()
        addr = path_address(address)
        result = await store.update_backend(addr, {"state": target})
        log.info("backend state set", address=addr, state=target)
        out = await present_written(store, result.backend, start_healthy=ctx.start_healthy)
        return StateChange(
            address=addr,
            state=result.backend.state,
            changed=result.outcome != "unchanged",
            in_flight=out.conn_count,
            backend=out,
        )

    @post(
        "/{address:str}/drain",
        status_code=HTTP_200_OK,
        summary="Drain: no new traffic, in-flight finishes",
        responses=problem_responses(400, 401, 404, 503),
    )
    async def drain(self, state: State, address: AddressParam) -> StateChange:
        return await self._set_state(state, address, "draining")

    @post(
        "/{address:str}/enable",
        status_code=HTTP_200_OK,
        summary="Enable: take new traffic again",
        responses=problem_responses(400, 401, 404, 503),
    )
    async def enable(self, state: State, address: AddressParam) -> StateChange:
        return await self._set_state(state, address, "enabled")

    @post(
        "/{address:str}/disable",
        status_code=HTTP_200_OK,
        summary="Disable: no traffic at all",
        responses=problem_responses(400, 401, 404, 503),
    )
    async def disable(self, state: State, address: AddressParam) -> StateChange:
        return await self._set_state(state, address, "disabled")
