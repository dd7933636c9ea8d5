"""Operator overrides on backends a discovery source owns: kept through the source's writes, cleared on demand."""

from __future__ import annotations

import pytest

from shared.models import Backend, BackendOverride
from shared.store import BackendNotFound, Store

ADDR = "10.0.0.1:80"


async def source_writes(
    store: Store, weight: int, *, fields: tuple[str, ...] = ("weight",), state: str = "enabled"
) -> str:
    backend = Backend(address=ADDR, weight=weight, origin="static", state=state)  # type: ignore[arg-type]
    return (await store.upsert_backend(backend, fields=fields, guard_origin="static")).outcome


async def stored(store: Store) -> Backend:
    view = await store.get_backend(ADDR)
    assert view is not None
    return view.backend


async def test_a_weight_override_survives_the_source_and_clearing_restores_the_source(store: Store) -> None:
    assert await source_writes(store, 1) == "backend_added"
    result = await store.update_backend(ADDR, {"weight": 3})
    assert result.outcome == "backend_updated"
    b = await stored(store)
    assert (b.weight, b.override, b.discovered) == (3, BackendOverride(weight=3), BackendOverride(weight=1))

    version = await store.version()
    assert await source_writes(store, 1) == "unchanged"  # the source repeats itself: nothing written
    assert await store.version() == version
    assert await source_writes(store, 2) == "backend_updated"  # the source changes its mind: remembered
    b = await stored(store)
    assert (b.weight, b.override, b.discovered) == (3, BackendOverride(weight=3), BackendOverride(weight=2))
    assert b.source_value("weight") == 2

    cleared = await store.clear_override(ADDR)
    assert cleared.outcome == "backend_updated"
    b = await stored(store)
    assert (b.weight, b.override, b.discovered) == (2, None, None)
    assert (await store.clear_override(ADDR)).outcome == "unchanged"


async def test_setting_the_source_value_back_ends_that_override(store: Store) -> None:
    await source_writes(store, 4)
    await store.update_backend(ADDR, {"weight": 9})
    await store.update_backend(ADDR, {"weight": 4})
    b = await stored(store)
    assert (b.weight, b.override, b.discovered) == (4, None, None)
    assert (await store.update_backend(ADDR, {"weight": 4})).outcome == "unchanged"


async def test_state_is_overridden_the_same_way(store: Store) -> None:
    # A source that manages state (Kubernetes readiness) does not undo an operator's drain.
    await source_writes(store, 1, fields=("weight", "state"))
    await store.update_backend(ADDR, {"state": "draining"})
    assert await source_writes(store, 1, fields=("weight", "state")) == "unchanged"
    await source_writes(store, 1, fields=("weight", "state"), state="disabled")
    b = await stored(store)
    assert (b.state, b.override, b.discovered) == (
        "draining",
        BackendOverride(state="draining"),
        BackendOverride(state="disabled"),
    )
    await store.clear_override(ADDR)
    assert (await stored(store)).state == "disabled"
    # drain then enable again leaves no trace
    await source_writes(store, 1, fields=("weight", "state"), state="enabled")
    await store.update_backend(ADDR, {"state": "draining"})
    await store.update_backend(ADDR, {"state": "enabled"})
    b = await stored(store)
    assert (b.state, b.override, b.discovered) == ("enabled", None, None)


async def test_both_fields_at_once_and_the_event_carries_the_override(store: Store) -> None:
    await source_writes(store, 1)
    await store.update_backend(ADDR, {"weight": 7, "state": "disabled"})
    snap = await store.snapshot()
    b = snap.backends[ADDR].backend
    assert b.override == BackendOverride(weight=7, state="disabled")
    assert b.discovered == BackendOverride(weight=1, state="enabled")
    await store.clear_override(ADDR)
    b = await stored(store)
    assert (b.weight, b.state, b.override) == (1, "enabled", None)


async def test_operator_backends_have_no_override(store: Store) -> None:
    await store.create_backend(Backend(address=ADDR, weight=1))
    await store.update_backend(ADDR, {"weight": 5})
    b = await stored(store)
    assert (b.weight, b.override, b.discovered) == (5, None, None)
    assert (await store.clear_override(ADDR)).outcome == "unchanged"


async def test_clearing_a_missing_backend(store: Store) -> None:
    with pytest.raises(BackendNotFound):
        await store.clear_override("ghost:1")
