"""The Docker source: running containers labelled ``lb.enable=true``.

Labels (all optional but ``lb.enable``):
- ``lb.port``: the backend port. Default (as docs/deploy.md says): the container's only exposed TCP
  port, else 80 — when it exposes none or several. An image exposing several ports is common (the
  project's own exposes the proxy's and the admin's) and says nothing about the one a container
  serves on, so it never makes the default ambiguous; ``lb.port`` says otherwise.
- ``lb.weight``: an integer 1-10000, default 1.
- ``lb.network``: the network whose address is used. Otherwise ``discovery.docker.network`` when
  the container is on it, else the alphabetically first network that gives it an address.
- ``lb.pool``: the pool the backend serves, default ``default`` (so containers labelled before pools
  existed keep serving the default pool); created in the store if absent.
- ``lb.host`` / ``lb.path_prefix``: the pool's route: a route named ``docker-<pool>`` with that host
  (exact or ``*.example.com``) and path prefix (default ``/``) sends requests to the pool. It exists
  while a running labelled container asks for it; when the containers of one pool disagree, the
  smallest (host, prefix) wins and the disagreement is logged. See ``services.discovery.seeding``.
An invalid label (or an ``lb.network`` the container is not on) is logged and that container is
skipped — never silently defaulted.

Eligibility, decided from ``inspect`` (the truth) and never from the event that triggered it:
running, not paused, not restarting, and — when it has a healthcheck — not ``unhealthy``
(``starting`` is eligible: GoBalancer's own health probes gate traffic until it answers). A paused
container cannot answer, so it is *removed* rather than drained (in-flight requests would hang
either way); an unhealthy one is removed too, and comes back on ``unpause`` / ``health_status: healthy``.

Staying current: list, then follow ``/events`` from just before the listing (a replayed event is
harmless: every event only means "inspect this container again"), coalescing a burst per
container and dropping exact duplicates. Any end or error of the stream leads to a reconnect with
capped exponential backoff and a full re-list (which catches whatever happened while disconnected,
including events the engine dropped), and a full re-list runs every ``resync_sec`` regardless.

The docker SDK is synchronous: listing and inspecting run in ``asyncio.to_thread``; the blocking
event stream is read by a daemon thread that only forwards events into an asyncio queue (the
engine drops subscribers that do not read within 100 ms, so nothing slow happens there).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.discovery.seeding import OWNED_PREFIX, DesiredSettings
from services.discovery.sources import Publish
from shared.addresses import format_address, normalize_address
from shared.aio import Backoff
from shared.config import DEFAULT_POOL, DockerDiscoveryConfig, RouteConfig
from shared.config.routing import check_name
from shared.logs import get_logger
from shared.models import Backend, Origin

log = get_logger("discovery.docker")

ENABLE_LABEL = "lb.enable"
POOL_LABEL = "lb.pool"
HOST_LABEL = "lb.host"
PREFIX_LABEL = "lb.path_prefix"
EVENT_ACTIONS = ("start", "die", "stop", "kill", "pause", "unpause", "health_status")
EVENT_FILTERS: dict[str, Any] = {"type": "container", "label": f"{ENABLE_LABEL}=true", "event": list(EVENT_ACTIONS)}
LIST_FILTERS: dict[str, Any] = {"label": f"{ENABLE_LABEL}=true"}
_INT = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class Skip:
    """A labelled container that cannot be used, and why (logged)."""

    reason: str


def container_name(attrs: Mapping[str, Any]) -> str:
    return str(attrs.get("Name") or attrs.get("Id", "?")[:12]).lstrip("/")


def _int_label(labels: Mapping[str, str], name: str, lo: int, hi: int) -> int | Skip | None:
    raw = labels.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if not _INT.match(text) or not lo <= int(text) <= hi:
        return Skip(f"invalid {name} {raw!r} (expected an integer {lo}-{hi})")
    return int(text)


def _default_port(config: Mapping[str, Any]) -> int:
    exposed = [
        spec.split("/", 1)[0] for spec in (config.get("ExposedPorts") or {}) if spec.endswith("/tcp") or "/" not in spec
    ]
    if len(exposed) == 1 and _INT.match(exposed[0]) and 1 <= int(exposed[0]) <= 65535:
        return int(exposed[0])
    return 80


def _network_ip(settings: Mapping[str, Any]) -> str:
    ip = str(settings.get("IPAddress") or "")
    return ip or str(settings.get("GlobalIPv6Address") or "")


def container_backend(attrs: Mapping[str, Any], preferred_network: str = "") -> Backend | Skip | None:
    """The backend an inspected container stands for; None when it is (now) not eligible."""
    config = attrs.get("Config") or {}
    labels: Mapping[str, str] = config.get("Labels") or {}
    if labels.get(ENABLE_LABEL) != "true":
        return None
    state = attrs.get("State") or {}
    if not state.get("Running") or state.get("Paused") or state.get("Restarting"):
        return None
    # Docker's own health check: "unhealthy" removes the backend. "starting" does not: a fresh
    # container would otherwise wait a whole Docker health interval (often 10-30 s) before it could
    # take traffic, and GoBalancer's health service already gates traffic with its own probes.
    health = state.get("Health")
    if health and health.get("Status") == "unhealthy":
        return None

    weight = _int_label(labels, "lb.weight", 1, 10000)
    if isinstance(weight, Skip):
        return weight
    port = _int_label(labels, "lb.port", 1, 65535)
    if isinstance(port, Skip):
        return port
    if port is None:
        port = _default_port(config)

    networks: Mapping[str, Any] = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    with_ip = {name: ip for name, s in networks.items() if (ip := _network_ip(s or {}))}
    chosen = labels.get("lb.network")
    if chosen is not None:
        if chosen not in networks:
            return Skip(f"lb.network {chosen!r} is not one of the container's networks {sorted(networks)}")
        if chosen not in with_ip:
            return Skip(f"no address on lb.network {chosen!r}")
    elif not with_ip:
        return Skip(f"no address on any network {sorted(networks)}")
    elif preferred_network in with_ip:
        chosen = preferred_network
    else:
        chosen = sorted(with_ip)[0]
    try:
        address = normalize_address(format_address(with_ip[chosen], port))
    except ValueError as exc:
        return Skip(f"unusable address: {exc}")
    pool = container_pool(labels)
    if isinstance(pool, Skip):
        return pool
    route = container_route(labels, pool)
    if isinstance(route, Skip):
        return route
    return Backend(address=address, weight=weight or 1, origin="docker", pool=pool)


def container_pool(labels: Mapping[str, str]) -> str | Skip:
    pool = labels.get(POOL_LABEL, DEFAULT_POOL).strip()
    try:
        check_name("pool", pool)
    except ValueError as exc:
        return Skip(f"invalid {POOL_LABEL}: {exc}")
    return pool


def container_route(labels: Mapping[str, str], pool: str) -> RouteConfig | Skip | None:
    """The route a container's ``lb.host`` / ``lb.path_prefix`` ask for its pool (None: neither is set)."""
    host = labels.get(HOST_LABEL)
    prefix = labels.get(PREFIX_LABEL)
    if host is None and prefix is None:
        return None
    try:
        return RouteConfig(name=OWNED_PREFIX + pool, pool=pool, host=(host or "").strip(), path_prefix=prefix or "/")
    except ValueError as exc:  # "host: route 'docker-web': ..." / a pool name too long for a route's
        field, _, problem = str(exc).partition(": ")
        label = {"host": HOST_LABEL, "path_prefix": PREFIX_LABEL}.get(field, POOL_LABEL)
        return Skip(f"invalid {label}: {problem or exc}")


@dataclass
class _End:
    error: BaseException | None


class DockerSource:
    origin: Origin = "docker"
    fields: tuple[str, ...] = ("weight", "pool")  # no draining from Docker; an operator's drain is kept

    def __init__(self, config: DockerDiscoveryConfig, *, backoff_cap: float = 5.0) -> None:
        self.config = config
        self.resync = float(config.resync_sec)
        self._entries: dict[str, Backend] = {}  # container id -> backend (eligible ones)
        self._routes: dict[str, RouteConfig] = {}  # container id -> the route its labels ask for (eligible ones)
        self._route_conflicts: dict[str, tuple[RouteConfig, ...]] = {}  # pool -> the disagreeing routes (logged)
        self._reasons: dict[str, str] = {}  # container id -> last logged skip reason
        self._seen: set[tuple[str, str, int]] = set()
        self._seen_order: deque[tuple[str, str, int]] = deque()
        self._backoff = Backoff(cap=backoff_cap)
        # Counters for logs and tests.
        self.connects = 0
        self.relists = 0
        self.events = 0
        self.duplicates = 0

    # -- blocking parts (threads) --------------------------------------------------------------

    def _client(self) -> Any:
        import docker

        if self.config.url:
            return docker.DockerClient(base_url=self.config.url, timeout=10)
        return docker.from_env(timeout=10)

    def _list(self, client: Any) -> list[dict[str, Any]]:
        containers = client.containers.list(filters=LIST_FILTERS, ignore_removed=True)
        return [c.attrs for c in containers]

    def _inspect(self, client: Any, container_id: str) -> dict[str, Any] | None:
        import docker.errors

        try:
            attrs: dict[str, Any] = client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        return attrs

    @staticmethod
    def _pump(stream: Any, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        error: BaseException | None = None
        try:
            for event in stream:
                loop.call_soon_threadsafe(queue.put_nowait, event)
        except BaseException as exc:  # any failure ends the stream; the owner reconnects
            error = exc
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, _End(error))

    # -- state ---------------------------------------------------------------------------------

    def _update(self, container_id: str, attrs: Mapping[str, Any] | None) -> None:
        result = container_backend(attrs, self.config.network) if attrs is not None else None
        if isinstance(result, Skip):
            if self._reasons.get(container_id) != result.reason:
                log.warning("container skipped", container=container_name(attrs or {}), reason=result.reason)
            self._reasons[container_id] = result.reason
            self._entries.pop(container_id, None)
            self._routes.pop(container_id, None)
            return
        self._reasons.pop(container_id, None)
        self._routes.pop(container_id, None)
        if result is None:
            self._entries.pop(container_id, None)
        else:
            self._entries[container_id] = result
            labels = ((attrs or {}).get("Config") or {}).get("Labels") or {}
            route = container_route(labels, result.pool)
            if isinstance(route, RouteConfig):
                self._routes[container_id] = route

    def desired(self) -> dict[str, Backend]:
        return {b.address: b for _, b in sorted(self._entries.items())}

    def settings(self) -> DesiredSettings:
        """The pools of the eligible containers, and one route per pool whose containers ask for one."""
        by_pool: dict[str, set[tuple[str, str]]] = {}
        for route in self._routes.values():
            by_pool.setdefault(route.pool, set()).add((route.host, route.path_prefix))
        routes: list[RouteConfig] = []
        conflicts: dict[str, tuple[RouteConfig, ...]] = {}
        for pool in sorted(by_pool):
            host, prefix = min(by_pool[pool])
            routes.append(RouteConfig(name=OWNED_PREFIX + pool, pool=pool, host=host, path_prefix=prefix))
            if len(by_pool[pool]) > 1:
                conflicts[pool] = tuple(
                    RouteConfig(name=OWNED_PREFIX + pool, pool=pool, host=h, path_prefix=p)
                    for h, p in sorted(by_pool[pool])
                )
        for pool, seen in sorted(conflicts.items()):
            if self._route_conflicts.get(pool) != seen:
                log.warning(
                    "containers of one pool ask for different routes; the first is used",
                    pool=pool,
                    routes=[f"{r.host or '*'}{r.path_prefix}" for r in seen],
                )
        self._route_conflicts = conflicts
        return DesiredSettings(pools=tuple(sorted({b.pool for b in self._entries.values()})), routes=tuple(routes))

    def _duplicate(self, event: Mapping[str, Any]) -> bool:
        action = str(event.get("Action") or event.get("status") or "")
        key = (str(event.get("id") or ""), action, int(event.get("timeNano") or 0))
        if key in self._seen:
            return True
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > 4096:
            self._seen.discard(self._seen_order.popleft())
        return False

    async def _relist(self, client: Any, publish: Publish) -> None:
        listed = await asyncio.to_thread(self._list, client)
        self.relists += 1
        present = {str(attrs["Id"]) for attrs in listed}
        for container_id in (self._entries.keys() | self._reasons.keys()) - present:
            self._update(container_id, None)  # gone: forgets its backend or its skip reason
        for attrs in listed:
            self._update(str(attrs["Id"]), attrs)
        publish(self.desired(), self.settings())

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, publish: Publish) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._session(publish)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # engine down, socket errors, API errors: retry
                log.warning("docker engine unreachable; keeping the last backends", error=str(exc) or repr(exc))
            if time.monotonic() - started > max(10.0, self.resync):
                self._backoff.reset()  # the session was healthy for a while: reconnect promptly
            await asyncio.sleep(self._backoff.next())

    async def _session(self, publish: Publish) -> None:
        loop = asyncio.get_running_loop()
        client = await asyncio.to_thread(self._client)
        stream: Any = None
        try:
            # Events from just before the listing: anything that happens meanwhile is replayed.
            since = int(time.time()) - 1
            await self._relist(client, publish)
            stream = await asyncio.to_thread(client.events, decode=True, since=since, filters=EVENT_FILTERS)
            self.connects += 1
            log.info("following docker events", containers=len(self._entries), since=since)
            queue: asyncio.Queue[Any] = asyncio.Queue()
            threading.Thread(target=self._pump, args=(stream, loop, queue), name="docker-events", daemon=True).start()
            next_resync = time.monotonic() + self.resync
            while True:
                # asyncio.wait, not wait_for: 3.11's wait_for can swallow a cancellation that races a result.
                getter = asyncio.ensure_future(queue.get())
                try:
                    done, _ = await asyncio.wait({getter}, timeout=max(0.0, next_resync - time.monotonic()))
                finally:
                    if not getter.done():
                        getter.cancel()
                if not done:
                    await self._relist(client, publish)
                    next_resync = time.monotonic() + self.resync
                    continue
                batch = [getter.result()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                ids: list[str] = []
                ended: _End | None = None
                for event in batch:
                    if isinstance(event, _End):
                        ended = event
                        continue
                    self.events += 1
                    if self._duplicate(event):
                        self.duplicates += 1
                        continue
                    container_id = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
                    if container_id and container_id not in ids:
                        ids.append(container_id)
                for container_id in ids:
                    self._update(container_id, await asyncio.to_thread(self._inspect, client, container_id))
                if ids:
                    publish(self.desired(), self.settings())
                if ended is not None:
                    reason = str(ended.error) if ended.error else "closed by the engine"
                    log.warning("docker event stream ended; reconnecting", reason=reason)
                    return
        finally:
            if stream is not None:
                await asyncio.to_thread(_close_quietly, stream)
            await asyncio.to_thread(_close_quietly, client)


def _close_quietly(obj: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken stream or client may fail; it is gone either way
        obj.close()
