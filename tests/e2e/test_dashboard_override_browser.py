"""The dashboard shows an operator override on a discovered backend and clears it (issues 17.3 and 19)."""

from __future__ import annotations

from typing import Any

from shared.models import Backend
from shared.store import Store
from tests.e2e.test_dashboard_browser import browser, new_page, row, served
from tests.helpers import eventually

__all__ = ["browser"]  # the fixture, imported for this module's tests

S = "127.0.0.1:9011"


async def test_an_override_is_shown_and_cleared(browser: Any, redis_url: str, namespace: str, store: Store) -> None:
    from playwright.async_api import expect

    await store.upsert_backend(Backend(address=S, weight=1, origin="static"), guard_origin="static")
    await store.set_health(S, "up")
    errors: list[str] = []
    with served(redis_url, namespace) as admin:
        page = await new_page(browser, errors)
        await page.goto(admin.url + "/")
        origin = row(page, S).locator("td.origin")
        await expect(origin).to_have_text("static")
        await expect(page.get_by_role("button", name=f"Clear the override of {S}", exact=False)).to_have_count(0)

        # The operator's weight, from the page: an override, shown next to the origin with the source's value.
        await page.get_by_label(f"Weight of {S}", exact=True).fill("3")
        await page.get_by_role("button", name=f"Set weight of {S}").click()
        await expect(origin.locator(".override")).to_have_text("override weight=3 (source 1)")

        # Cleared from the page: the source's weight is back, the tag and the button are gone.
        await page.get_by_role("button", name=f"Clear the override of {S}", exact=False).click()

        async def restored() -> bool:
            view = await store.get_backend(S)
            return view is not None and view.backend.weight == 1 and view.backend.override is None

        await eventually(restored, timeout=5, message="the clear button restored the source's weight")
        await expect(origin).to_have_text("static")
        await expect(row(page, S).get_by_label(f"Weight of {S}", exact=True)).to_have_value("1")
    assert not errors, errors
