"""Issue 18: GET /backends from the snapshot: filters, pages stable under concurrent changes, ETag -> 304."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from shared.models import Backend
from shared.store import Store
from tests.integration.admin.server import caught_up
from tests.integration.admin.test_backends_api import assert_problem

Client = AsyncTestClient[Litestar]


def addr(i: int) -> str:
    return f"10.0.{i // 256}.{i % 256}:80"


async def seed(store: Store, n: int) -> None:
    for i in range(n):
        await store.create_backend(Backend(address=addr(i), origin="docker" if i % 3 == 0 else "api"))
        if i % 2:
            await store.set_health(addr(i), "down", "refused")


async def test_filters(client: Client, store: Store) -> None:
    await seed(store, 12)
    await store.update_backend(addr(4), {"state": "draining"})
    await caught_up(client.app, store)
    down = (await client.get("/backends?health=down")).json()
    assert {b["address"] for b in down} == {addr(i) for i in range(12) if i % 2}
    assert all(b["health"] == "down" for b in down)
    assert [b["address"] for b in (await client.get("/backends?state=draining")).json()] == [addr(4)]
    docker_down = (await client.get("/backends?origin=docker&health=down")).json()
    assert {b["address"] for b in docker_down} == {addr(i) for i in range(12) if i % 3 == 0 and i % 2}
    assert_problem(await client.get("/backends?health=sideways"), 400, "health")
    assert_problem(await client.get("/backends?limit=0"), 400, "limit")


async def test_pages_cover_everything_once_while_backends_come_and_go(client: Client, store: Store) -> None:
    await seed(store, 50)
    await caught_up(client.app, store)
    unpaginated = (await client.get("/backends")).json()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        r = await client.get("/backends", params={"limit": 7, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200
        page = [b["address"] for b in r.json()]
        seen += page
        pages += 1
        if pages == 2:  # between pages: one backend before the cursor goes, one after it comes
            await store.remove_backend(seen[0])
            await store.create_backend(Backend(address="10.9.9.9:80"))
            await caught_up(client.app, store)
        cursor = r.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in r.headers
            break
        assert cursor == page[-1] and 'rel="next"' in r.headers["link"]
    everything = sorted(b["address"] for b in unpaginated)
    assert seen == sorted(seen) and len(seen) == len(set(seen))  # address order, nothing twice
    assert set(everything) <= set(seen)  # nothing that existed throughout was skipped
    assert "10.9.9.9:80" in seen  # added after the cursor: on a later page


async def test_etag_answers_304_until_something_changes(client: Client, store: Store) -> None:
    await seed(store, 3)
    await caught_up(client.app, store)
    first = await client.get("/backends")
    etag = first.headers["etag"]
    again = await client.get("/backends", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    await store.set_health(addr(0), "up")
    await caught_up(client.app, store)
    changed = await client.get("/backends", headers={"if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert next(b for b in changed.json() if b["address"] == addr(0))["health"] == "up"


async def test_the_unpaginated_list_keeps_its_shape(client: Client, store: Store) -> None:
    await seed(store, 2)
    await caught_up(client.app, store)
    items = (await client.get("/backends")).json()
    assert isinstance(items, list) and [i["address"] for i in items] == [addr(0), addr(1)]
    assert list(items[0]) == [
        "address", "weight", "alive", "conn_count", "health", "health_reason", "health_changed_at", "state",
        "origin", "ejected", "ejected_until", "created_at", "updated_at", "override", "discovered", "pool",
    ]  # fmt: skip


async def test_a_large_list_is_gzipped_for_clients_that_accept_it(client: Client, store: Store) -> None:
    await seed(store, 80)  # about 22 KB of JSON
    await caught_up(client.app, store)
    plain = await client.get("/backends", headers={"accept-encoding": "identity"})
    packed = await client.get("/backends", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in plain.headers and len(plain.content) > 8192
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert int(packed.headers["content-length"]) < len(plain.content) / 5
    assert packed.json() == plain.json()  # (httpx decodes it)
    assert packed.headers["etag"] != plain.headers["etag"]  # one ETag per representation
    again = await client.get("/backends", headers={"accept-encoding": "gzip", "if-none-match": packed.headers["etag"]})
    assert again.status_code == 304


async def test_reads_do_not_touch_redis(client: Client, store: Store) -> None:
    """Issue 18: the snapshot serves reads; Redis sees only the admin's periodic work meanwhile."""
    await seed(store, 20)
    await caught_up(client.app, store)

    async def commands() -> int:
        return int((await store.redis.info("stats"))["total_commands_processed"])

    before = await commands()
    for i in range(200):
        assert (await client.get("/backends" if i % 2 else f"/backends/{addr(i % 20)}")).status_code == 200
    assert (await client.get("/algorithm")).status_code == 200
    spent = await commands() - before - 1  # (the INFO itself)
    # The in-flight refresh (every 0.5 s) and the heartbeat run meanwhile; 200 reads would be 200+.
    assert spent < 40, f"{spent} Redis commands during 201 reads"
