"""The static source: the config file's ``backends``, watched for changes.

The file is polled (mtime, size and ctime every ``discovery.file_poll_sec``, then a SHA-256 of its
bytes) — no inotify dependency, and editors that replace the file by rename are seen too. A changed
file is loaded with the same ``load_config`` as at startup (environment overrides included); an
invalid one is refused with its one-line ``ConfigError`` logged once, and the running set is kept.
Applied live: the backends (top-level ``backends`` in pool ``default``, ``pools.NAME.backends`` in pool
``NAME``) and new pools (created in the store if absent, see ``services.discovery.seeding``); other
settings need a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from services.discovery.seeding import DesiredSettings
from services.discovery.sources import Publish
from shared.config import Config, ConfigError, load_config
from shared.logs import get_logger
from shared.models import Backend, Origin

log = get_logger("discovery.static")


def desired_from_config(config: Config) -> dict[str, Backend]:
    """The top-level ``backends`` (pool ``default``) and each ``pools.NAME.backends`` (pool ``NAME``).

    The store holds an address in one pool at a time: an address in several pools of the file (fine for
    a proxy without Redis, which reads the file itself) is written in the first (``default``, then the
    file's order); :func:`shared_addresses` names the others, for the log."""
    out: dict[str, Backend] = {}
    for pool, section in config.pool_configs().items():
        for b in section.backends:
            out.setdefault(b.address, Backend(address=b.address, weight=b.weight, origin="static", pool=pool))
    return out


def shared_addresses(config: Config) -> list[str]:
    """``address: pool X (kept), pool Y (not written)`` for every address the file puts in several pools."""
    pools: dict[str, list[str]] = {}
    for pool, section in config.pool_configs().items():
        for b in section.backends:
            pools.setdefault(b.address, []).append(pool)
    return [f"{a}: pool {p[0]} (kept), " + ", ".join(p[1:]) for a, p in sorted(pools.items()) if len(p) > 1]


def settings_from_config(config: Config) -> DesiredSettings:
    """The file's pools, so that a reload adding one (and no backend) still reaches the store at once."""
    return DesiredSettings(pools=tuple(sorted(config.pools)), config=config)


class StaticSource:
    origin: Origin = "static"
    # An operator's drain/disable through the API is kept; a backend moved to another pool in the file moves.
    fields: tuple[str, ...] = ("weight", "pool")

    def __init__(self, config: Config, path: str | None) -> None:
        self.config = config
        self.path = path
        self.poll = float(config.discovery.file_poll_sec)
        self.watch = config.discovery.watch_file and path is not None
        self._stamp: tuple[int, int, int] | None = None
        self._digest: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ctime_ns)

    def _read_digest(self) -> str | None:
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None

    def _desired(self, config: Config) -> dict[str, Backend]:
        shared = shared_addresses(config)
        if shared:
            log.warning("addresses in several pools of the file: the store holds each in its first", shared=shared)
        return desired_from_config(config)

    def _check(self) -> Config | None:
        """A newly valid config when the file changed, else None (an invalid change is logged once)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            if digest is None:
                log.warning("config file unreadable; keeping the running backends", file=self.path)
            return None
        self._digest = digest
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            log.error("config change refused; keeping the running backends", error=str(exc))
            return None
        return config

    async def run(self, publish: Publish) -> None:
        if self.watch:
            self._stamp = await asyncio.to_thread(self._stat)
            self._digest = await asyncio.to_thread(self._read_digest)
        current = self._desired(self.config)
        publish(current, settings_from_config(self.config))
        if not self.watch:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.poll)
            config = await asyncio.to_thread(self._check)
            if config is None:
                continue
            new = self._desired(config)
            if new != current:
                log.info("config change applied", backends=len(new), file=self.path)
            current = new
            publish(current, settings_from_config(config))
