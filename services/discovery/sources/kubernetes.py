"""The Kubernetes source: the EndpointSlices of one Service, through the ``kubernetes`` client.

The slices labelled ``kubernetes.io/service-name=SERVICE`` in ``namespace`` are listed, then watched
from the list's ``resourceVersion`` with bookmarks and a server-side ``timeoutSeconds``. All slices
of the service are merged into one set:
- an endpoint whose ``ready`` is true (or unset) is an enabled backend;
- one that is not ready but ``serving`` and ``terminating`` is *draining* (it finishes in-flight
  requests; new ones go elsewhere);
- anything else is not a backend. The first address of an endpoint is used (they are fungible).
The port is the one named ``port_name`` or, when that is empty, the slice's first port; a slice
without it contributes nothing (logged). An address in two slices is enabled if either says so.

Never stale: a watch that ends (server timeout, closed connection) is restarted from the last
resourceVersion seen (bookmarks advance it); ``410 Gone`` (an ERROR event, or the client's
``ApiException``) leads to a fresh list; any other error to a fresh list after a capped backoff.

The client is synchronous: the list/watch loop runs in one daemon thread that hands whole desired
sets to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from services.discovery.sources import Publish
from shared.addresses import format_address, normalize_address
from shared.aio import Backoff
from shared.config import KubernetesDiscoveryConfig
from shared.logs import get_logger
from shared.models import AdminState, Backend, Origin

log = get_logger("discovery.kubernetes")

SERVICE_LABEL = "kubernetes.io/service-name"


def _slice_port(slice_: Mapping[str, Any], port_name: str) -> int | str:
    """The slice's port number, or a reason it has none."""
    ports = slice_.get("ports") or []
    if port_name:
        chosen = next((p for p in ports if (p or {}).get("name") == port_name), None)
        if chosen is None:
            return f"no port named {port_name!r}"
    elif ports:
        chosen = ports[0]
    else:
        return "no ports"
    number = (chosen or {}).get("port")
    if not isinstance(number, int) or not 1 <= number <= 65535:
        return f"port {number!r} is not a port number"
    return number


def endpoint_state(conditions: Mapping[str, Any] | None) -> AdminState | None:
    """enabled (ready), draining (serving but terminating) or None (not a backend)."""
    cond = conditions or {}
    ready = cond.get("ready")
    if ready is None or ready is True:
        return "enabled"
    serving = cond.get("serving")
    if (serving is None or serving is True) and cond.get("terminating") is True:
        return "draining"
    return None


def slices_backends(slices: Iterable[Mapping[str, Any]], port_name: str = "") -> tuple[dict[str, Backend], list[str]]:
    """Merge raw (camelCase) EndpointSlices into backends; also returns one problem line per bad slice."""
    out: dict[str, Backend] = {}
    problems: list[str] = []
    for slice_ in slices:
        name = (slice_.get("metadata") or {}).get("name", "?")
        port = _slice_port(slice_, port_name)
        if isinstance(port, str):
            problems.append(f"slice {name}: {port}")
            continue
        for endpoint in slice_.get("endpoints") or []:
            state = endpoint_state(endpoint.get("conditions"))
            addresses = endpoint.get("addresses") or []
            if state is None or not addresses:
                continue
            try:
                address = normalize_address(format_address(str(addresses[0]), port))
            except ValueError as exc:
                problems.append(f"slice {name}: {exc}")
                continue
            if address in out and out[address].state == "enabled":
                continue
            out[address] = Backend(address=address, origin="kubernetes", state=state)
    return out, problems


class _Gone(Exception):
    """The resourceVersion expired (410): list again."""


class KubernetesSource:
    origin: Origin = "kubernetes"
    fields: tuple[str, ...] = ("weight", "state")  # readiness drives draining

    def __init__(self, config: KubernetesDiscoveryConfig, *, backoff_cap: float = 5.0) -> None:
        if not config.service:
            raise ValueError("discovery.kubernetes.service must be set for kubernetes discovery")
        self.config = config
        self.selector = f"{SERVICE_LABEL}={config.service}"
        self.timeout = max(1, int(config.watch_timeout_sec))
        self.backoff_cap = backoff_cap
        self._stopping = threading.Event()
        self._watch: Any = None
        self._problems: set[str] = set()
        self.gone = 0  # relists after 410 Gone (tests)

    def _api(self) -> Any:
        from kubernetes import client
        from kubernetes import config as _kconfig

        kconfig: Any = _kconfig  # the config loaders are untyped

        configuration = client.Configuration()
        if self.config.api_url:
            configuration.host = self.config.api_url.rstrip("/")
        elif self.config.kubeconfig:
            kconfig.load_kube_config(config_file=self.config.kubeconfig, client_configuration=configuration)
        else:
            try:
                kconfig.load_incluster_config(client_configuration=configuration)
            except kconfig.ConfigException:
                kconfig.load_kube_config(client_configuration=configuration)
        return client.DiscoveryV1Api(client.ApiClient(configuration=configuration))

    def _emit(self, loop: asyncio.AbstractEventLoop, publish: Publish, slices: Mapping[str, Mapping[str, Any]]) -> None:
        backends, problems = slices_backends(slices.values(), self.config.port_name)
        for problem in sorted(set(problems) - self._problems):
            log.warning("endpoint slice skipped", problem=problem)
        self._problems = set(problems)
        try:
            loop.call_soon_threadsafe(publish, backends)
        except RuntimeError:  # loop closed
            self._stopping.set()

    def _list(self, api: Any) -> tuple[str, dict[str, dict[str, Any]]]:
        # The raw JSON, decoded here, not the client's models: validating 10,000 endpoints into
        # models is one long call that holds the GIL (~250 ms measured), a stall of the event loop.
        response = api.list_namespaced_endpoint_slice(
            self.config.namespace, label_selector=self.selector, _request_timeout=(5, 30), _preload_content=False
        )
        try:
            status, data = int(response.status), response.data
        finally:
            response.release_conn()
        if not 200 <= status <= 299:
            raise RuntimeError(f"listing endpoint slices: HTTP {status}: {data[:200]!r}")
        body = msgspec.json.decode(data)
        slices = {item["metadata"]["name"]: item for item in body.get("items") or []}
        return str(body["metadata"]["resourceVersion"]), slices

    def _watch_once(self, api: Any, rv: str, slices: dict[str, dict[str, Any]], emit: Any) -> str:
        """One watch request from ``rv`` until the server ends it; returns the last resourceVersion."""
        from kubernetes import watch as _watch
        from kubernetes.client.exceptions import ApiException

        watch: Any = _watch  # untyped

        w = watch.Watch()
        self._watch = w
        try:
            for event in w.stream(
                api.list_namespaced_endpoint_slice,
                self.config.namespace,
                label_selector=self.selector,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.timeout,
                _request_timeout=(5, self.timeout + 10),
            ):
                if self._stopping.is_set():
                    break
                kind = event.get("type")
                raw = event.get("raw_object") or {}
                meta = raw.get("metadata") or {}
                if kind == "ERROR":  # the client raises for these; kept for safety
                    if raw.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error: {raw.get('message', raw)}")
                rv = str(meta.get("resourceVersion") or rv)
                if kind == "BOOKMARK":
                    continue
                name = meta.get("name")
                if not name:
                    continue
                if kind in ("ADDED", "MODIFIED"):
                    slices[name] = raw
                elif kind == "DELETED":
                    slices.pop(name, None)
                emit(slices)
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from None
            raise
        finally:
            self._watch = None
        return rv

    def _loop(self, loop: asyncio.AbstractEventLoop, publish: Publish) -> None:
        backoff = Backoff(cap=self.backoff_cap)

        def emit(slices: Mapping[str, Mapping[str, Any]]) -> None:
            self._emit(loop, publish, slices)

        api: Any = None
        while not self._stopping.is_set():
            try:
                if api is None:
                    api = self._api()
                rv, slices = self._list(api)
                emit(slices)
                log.info("endpoint slices listed", service=self.config.service, slices=len(slices), rv=rv)
                backoff.reset()
                while not self._stopping.is_set():
                    rv = self._watch_once(api, rv, slices, emit)  # ended normally: watch again from rv
            except _Gone:
                self.gone += 1
                log.info("resourceVersion expired (410 Gone); listing again")
            except Exception as exc:  # network, API and decode errors all mean: list again
                if self._stopping.is_set():
                    break
                delay = backoff.next()
                log.warning("kubernetes API error; listing again", error=str(exc) or repr(exc), retry_in=delay)
                self._stopping.wait(delay)

    async def run(self, publish: Publish) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def target() -> None:
            try:
                self._loop(loop, publish)
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, done)

        self._stopping.clear()
        threading.Thread(target=target, name="k8s-watch", daemon=True).start()
        try:
            await asyncio.shield(done)
        finally:
            self._stopping.set()
            w = self._watch
            if w is not None:
                w.stop()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
