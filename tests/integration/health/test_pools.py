"""Each backend probed with its pool's health check (the store's, else the config's pool section, else the
top-level one), against real HTTP backends and a real Redis; a change through the store applies at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.config import ProbeConfig
from shared.models import Backend, PoolSetting
from shared.store import Store
from tests.helpers import eventually
from tests.integration.health.backends import HttpBackend
from tests.integration.health.conftest import Recorder

Fixture = Callable[..., Any]
FAST: dict[str, Any] = {"type": "http", "interval_sec": 0.03, "timeout_sec": 0.5, "rise": 1, "fall": 1, "jitter": 0.0}


def paths(backend: HttpBackend) -> set[str]:
    return {r.split(b" ", 2)[1].decode() for r in backend.requests}


async def test_each_pool_has_its_own_path_and_expected_status(
    store: Store, recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    await store.set_pool(PoolSetting(name="web"), mode="create")
    # Both answer 500: the default pool expects 200-399 (down), pool web's section expects 500 (up).
    (default,) = await backends(1, "error")
    (web,) = await backends(1, "error", pool="web")
    # Pool api has no section: the top-level check. Pool slow: a long interval, its own path.
    (api,) = await backends(1, "error", pool="api")
    pools = {
        "web": ProbeConfig(**FAST, path="/web", expect_status="500"),
        "slow": ProbeConfig(**{**FAST, "interval_sec": 60.0}, path="/slow"),
    }
    await start_scheduler(**FAST, path="/top", pools=pools)
    await recorder.wait_for(default.address, "down")
    await recorder.wait_for(web.address, "up")
    await recorder.wait_for(api.address, "down")
    assert paths(default) == {"/top"} and paths(web) == {"/web"} and paths(api) == {"/top"}
    # One pool's interval does not slow another: pool slow probes once a minute, web keeps its pace.
    (slow,) = await backends(1, pool="slow")
    await recorder.wait_for(slow.address, "up")
    seen = len(web.requests)
    await eventually(lambda: len(web.requests) >= seen + 10, message="web probed every 30 ms")
    assert len(slow.requests) == 1 and paths(slow) == {"/slow"}


async def test_a_stored_health_check_applies_without_restart_and_leaves_other_pools_alone(
    store: Store, recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    await store.set_pool(PoolSetting(name="web"), mode="create")
    (web,) = await backends(1, "error", pool="web")
    (other,) = await backends(1)
    scheduler = await start_scheduler(**FAST, path="/top", pools={"web": ProbeConfig(**FAST, path="/cfg")})
    await recorder.wait_for(web.address, "down")
    await recorder.wait_for(other.address, "up")
    other_task = scheduler.targets[other.address].task
    # An operator sets pool web's health check in the store (PATCH /pools/web): it wins over the config's.
    stored = ProbeConfig(**FAST, path="/stored", expect_status="500")
    await store.set_pool(PoolSetting(name="web", health_check=stored), mode="update")
    await recorder.wait_for(web.address, "up")
    assert "/stored" in paths(web)
    assert scheduler.probe_config("web") == stored
    assert scheduler.targets[other.address].task is other_task  # the default pool's probes were not touched
    assert paths(other) == {"/top"} and recorder.statuses(other.address) == ["up"]
    # Back to None: the configuration's section again.
    await store.set_pool(PoolSetting(name="web"), mode="update")
    await recorder.wait_for(web.address, "down", count=2)
    web.requests.clear()
    await eventually(lambda: len(web.requests) >= 2)
    assert paths(web) == {"/cfg"}


async def test_a_backend_moved_to_another_pool_is_probed_with_that_pools_check(
    store: Store, recorder: Recorder, start_scheduler: Fixture, backends: Fixture
) -> None:
    await store.set_pool(PoolSetting(name="web"), mode="create")
    (b,) = await backends(1, "error")
    await start_scheduler(**FAST, path="/top", pools={"web": ProbeConfig(**FAST, path="/web", expect_status="500")})
    await recorder.wait_for(b.address, "down")
    await store.upsert_backend(Backend(address=b.address, origin="api", pool="web"))
    await recorder.wait_for(b.address, "up")
    b.requests.clear()
    await eventually(lambda: len(b.requests) >= 2)
    assert paths(b) == {"/web"}
