"""The shared reconciler against a real Redis: atomic, published, origin-guarded, fenced writes."""

from __future__ import annotations

import asyncio

import pytest

from services.discovery.desired import Desired
from services.discovery.leader import Leader
from services.discovery.reconcile import apply
from shared.models import Backend
from shared.store import Fenced, Store
from tests.helpers import eventually
from tests.integration.discovery.helpers import backends, equals


def docker(address: str, weight: int = 1) -> Backend:
    return Backend(address=address, weight=weight, origin="docker")


async def test_apply_adds_updates_removes_and_leaves_other_origins(store: Store) -> None:
    await store.create_backend(Backend(address="10.0.0.9:80", origin="api"))
    await store.create_backend(Backend(address="10.0.0.8:80", origin="static"))
    desired = {"10.0.0.1:80": docker("10.0.0.1:80"), "10.0.0.2:80": docker("10.0.0.2:80", 2)}
    out = await apply(store, desired, "docker", ("weight",), None)
    assert (out.written, out.removed) == (2, 0)
    version = await store.version()
    # Again: equal records write nothing and bump nothing (reconciles repeat freely).
    out = await apply(store, desired, "docker", ("weight",), None)
    assert (out.written, out.removed) == (0, 0) and await store.version() == version

    # An operator drains a docker backend: a weight-only source keeps the drain while changing the weight.
    await store.update_backend("10.0.0.2:80", {"state": "draining"})
    out = await apply(
        store,
        {"10.0.0.2:80": docker("10.0.0.2:80", 5), "10.0.0.9:80": docker("10.0.0.9:80")},
        "docker",
        ("weight",),
        None,
    )
    assert out.removed == 1 and out.written == 1 and out.conflicts == ["10.0.0.9:80"]
    assert await backends(store) == {
        "10.0.0.2:80": (5, "docker", "draining"),
        "10.0.0.8:80": (1, "static", "enabled"),  # another source's: untouched
        "10.0.0.9:80": (1, "api", "enabled"),  # the API's: untouched, not taken over
    }


async def test_a_stale_lease_is_fenced(store: Store) -> None:
    old = await store.acquire_lease("discovery", "a", 0.2)
    assert old is not None
    await eventually(lambda: store.acquire_lease("discovery", "b", 5), message="lease taken over")
    with pytest.raises(Fenced):
        await apply(store, {"10.0.0.1:80": docker("10.0.0.1:80")}, "docker", ("weight",), old)
    assert await store.list_backends() == []


async def test_leader_steps_down_when_its_lease_is_taken_and_the_standby_leads(store: Store) -> None:
    desired = Desired()
    desired.publish({"10.0.0.1:80": docker("10.0.0.1:80")})
    stop = asyncio.Event()
    a = Leader(store, desired, origin="docker", fields=("weight",), holder="a", ttl=1.0)
    b = Leader(store, desired, origin="docker", fields=("weight",), holder="b", ttl=1.0)
    ta = asyncio.create_task(a.run(stop))
    await asyncio.wait_for(a.is_leader.wait(), 2)
    await eventually(lambda: a.reconciles >= 1)
    tb = asyncio.create_task(b.run(stop))
    assert await backends(store) == {"10.0.0.1:80": (1, "docker", "enabled")}
    # Take the lease from under `a` (as if it had paused past its TTL): it must stand by, `b` leads.
    assert a.lease is not None
    await store.release_lease(a.lease)
    await asyncio.wait_for(b.is_leader.wait(), 2)
    desired.publish({"10.0.0.2:80": docker("10.0.0.2:80")})
    await eventually(lambda: not a.is_leader.is_set(), message="a stepped down")
    await eventually(equals(store, {"10.0.0.2:80": (1, "docker", "enabled")}), message="b reconciled")
    stop.set()
    await asyncio.wait_for(asyncio.gather(ta, tb), 3)
    assert await store.lease_holder("discovery") is None  # released on stop


async def test_a_discovered_backend_on_the_deny_list_is_never_written(store: Store, redis_url: str) -> None:
    """Issue 15 item 5: discovery goes through the same check as the admin API (the store's deny list)."""
    from shared.config import Config
    from shared.denylist import BackendDenyList

    config = Config()
    config.redis.url = redis_url
    config.backend_deny.networks = ["10.66.0.0/16"]
    store.denylist = BackendDenyList.from_config(config)
    redis_address = redis_url.split("//", 1)[1].split("/", 1)[0]
    desired = {
        "10.0.0.1:80": docker("10.0.0.1:80"),
        "10.66.1.1:80": docker("10.66.1.1:80"),
        redis_address: docker(redis_address),
    }
    out = await apply(store, desired, "docker", ("weight",), None)
    assert out.written == 1
    assert sorted(d.split(": ", 1)[0] for d in out.denied) == sorted(["10.66.1.1:80", redis_address])
    assert [v.address for v in await store.list_backends()] == ["10.0.0.1:80"]
