"""The admin app served by a real uvicorn on a free loopback port, in a thread with its own loop."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
from litestar import Litestar

from services.admin.context import context_of
from services.admin.main import build_server
from shared.config import Config
from shared.redis_server import free_port
from shared.store import Store


def admin_config(redis_url: str, namespace: str, **admin: object) -> Config:
    """Defaults, pointed at a test Redis namespace, with ``admin`` settings overridden."""
    config = Config()
    config.redis = msgspec.structs.replace(config.redis, url=redis_url, namespace=namespace)
    # (Litestar's test client sends Host: testserver.local)
    admin.setdefault("allowed_hosts", ["testserver.local"])
    config.admin = msgspec.structs.replace(config.admin, **admin)
    return config


class ServedAdmin:
    """`with ServedAdmin(config) as admin: admin.url ...` - stops the server and joins its thread on exit."""

    def __init__(self, config: Config) -> None:
        port = free_port()
        config.admin = msgspec.structs.replace(config.admin, listen_address=f"127.0.0.1:{port}")
        self.server, self.app = build_server(config)
        self.url = f"http://127.0.0.1:{port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="admin-test-server", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.server.serve())
        except BaseException as exc:  # surfaced by __enter__/__exit__
            self.error = exc
        finally:
            loop.close()

    @property
    def app_context(self) -> object:
        return context_of(self.app.state)

    def __enter__(self) -> ServedAdmin:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"admin server did not start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("admin server did not start within 10s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(context_of(self.app.state).closing.set)
        self.server.should_exit = True
        self._thread.join(15)
        assert not self._thread.is_alive(), "admin server did not stop"


__all__ = ["Litestar", "ServedAdmin", "admin_config", "caught_up"]


async def caught_up(app: Litestar, store: Store, *, inflight: bool = False, timeout: float = 5.0) -> None:
    """Wait until the app's snapshot holds every change written to ``store`` so far (written by the test
    itself, out of band: the admin sees it when its event arrives), and with ``inflight`` the in-flight
    counts pushed so far (read every INFLIGHT_SEC)."""
    snapshot = context_of(app.state).snapshot
    version = await store.version()
    counts = await store.global_inflight() if inflight else None
    deadline = time.monotonic() + timeout
    while not (
        snapshot.synced
        and snapshot.mirror.version >= version
        and (counts is None or snapshot.listing.inflight == counts)
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"the admin's snapshot did not reach version {version} within {timeout}s")
        await asyncio.sleep(0.01)
