"""Make the store's backends of one origin equal to a desired set; shared by every source.

``plan`` is the pure diff (no I/O); ``apply`` carries it out through the store, one atomic,
published, origin-guarded and fenced write per change. Backends of any other origin are never
touched: an address the source wants that is already held by another origin (typically one added
through the admin API) is left alone and reported as a conflict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.logs import get_logger
from shared.models import Backend, BackendOverride, Origin
from shared.store import BackendDenied, BackendNotFound, Lease, OriginMismatch, Store

log = get_logger("discovery.reconcile")


@dataclass
class Plan:
    upserts: list[Backend] = field(default_factory=list)  # new, or a managed field differs
    removals: list[str] = field(default_factory=list)  # ours, no longer desired
    conflicts: list[str] = field(default_factory=list)  # desired, but held by another origin

    def __bool__(self) -> bool:
        return bool(self.upserts or self.removals)


def plan(
    desired: Mapping[str, Backend],
    current: Mapping[str, Backend],
    origin: Origin,
    fields: tuple[str, ...] = ("weight",),
) -> Plan:
    """The changes that turn ``current`` (all backends in the store) into ``desired`` for ``origin``.

    ``fields`` are the fields the source manages on an existing backend: a source without a notion
    of draining passes ``("weight",)`` so an operator's drain or disable of its backend is kept.
    A field under an operator override is compared with what the source last wrote (the store
    keeps the operator's value in force), so an override costs no write on every reconcile.
    """
    out = Plan()
    for address in sorted(desired):
        want = desired[address]
        have = current.get(address)
        if have is None:
            out.upserts.append(want)
        elif have.origin != origin:
            out.conflicts.append(address)
        elif any(_source_value(have, f) != getattr(want, f) for f in fields):
            out.upserts.append(want)
    for address in sorted(current):
        if current[address].origin == origin and address not in desired:
            out.removals.append(address)
    return out


_OVERRIDABLE = frozenset(BackendOverride.__struct_fields__)


def _source_value(backend: Backend, field: str) -> object:
    """What the source last wrote for ``field``; a field an operator cannot override (``pool``) is the record's."""
    return backend.source_value(field) if field in _OVERRIDABLE else getattr(backend, field)


@dataclass
class Outcome:
    added: int = 0
    updated: int = 0
    removed: int = 0
    conflicts: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)  # desired, but on the deny list (backend_deny)

    @property
    def written(self) -> int:
        return self.added + self.updated


async def apply(
    store: Store,
    desired: Mapping[str, Backend],
    origin: Origin,
    fields: tuple[str, ...],
    lease: Lease | None,
    result: Outcome | None = None,
) -> Outcome:
    """Read the store, plan, write. Raises ``Fenced`` when the lease is gone (the caller steps down).

    The writes are counted into ``result`` as they land: a caller that passes its own still sees
    the writes of a reconcile that raised part-way.
    """
    current: dict[str, Backend] = {}
    async for backends in store.scan_backends():  # (in chunks: 10,000 backends parsed at once stall the loop)
        current.update((b.address, b) for b in backends)
    # Pure and O(n log n): at 10,000 backends ~20 ms, computed off the event loop.
    todo = await asyncio.to_thread(plan, desired, current, origin, fields)
    result = result if result is not None else Outcome()
    result.conflicts = list(todo.conflicts)  # the caller logs new ones (a reconcile repeats)
    result.denied = []
    for backend in todo.upserts:
        try:
            written = await store.upsert_backend(backend, fields=fields, guard_origin=origin, fence=lease)
        except OriginMismatch:  # raced with an API write since we read
            result.conflicts.append(backend.address)
            continue
        except BackendDenied as exc:  # the suite's own listener, or a denied network: never written
            result.denied.append(f"{backend.address}: {exc.reason}")
            continue
        if written.outcome != "unchanged":
            if written.outcome == "backend_added":
                result.added += 1
            else:
                result.updated += 1
            log.info(written.outcome, address=backend.address, weight=backend.weight, state=written.backend.state)
    for address in todo.removals:
        try:
            await store.remove_backend(address, guard_origin=origin, fence=lease)
        except BackendNotFound:
            continue
        except OriginMismatch as exc:
            log.info("address taken over by another origin; left alone", address=address, origin=exc.backend.origin)
            continue
        result.removed += 1
        log.info("backend_removed", address=address, origin=origin)
    return result
