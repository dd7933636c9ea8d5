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

Weight: the ``gobalancer.io/weight`` annotation (an integer 1..10000) of the endpoint's Pod (its
``targetRef``), else of the Service, else 1; an invalid value is logged and ignored. The Service is
read at every list and every watch restart (``watch_timeout_sec``); its pods are listed with each
list (the Service's selector), and a pod that appears later is read when an endpoint first refers to
it. A pod's annotation changed later is seen at the next list.

The client is synchronous: the list/watch loop runs in one daemon thread that hands whole desired
sets to the event loop with ``call_soon_threadsafe``. Lists and reads are decoded from the raw JSON
(msgspec), not validated into the client's models: at 10,000 endpoints that validation is one call of
~250 ms holding the GIL, a stall of the event loop.
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
from shared.aio import Backoff, cancel_and_wait
from shared.config import DEFAULT_POOL, KubernetesDiscoveryConfig, KubernetesServiceConfig
from shared.logs import get_logger
from shared.models import AdminState, Backend, Origin

log = get_logger("discovery.kubernetes")

SERVICE_LABEL = "kubernetes.io/service-name"
WEIGHT_ANNOTATION = "gobalancer.io/weight"
MAX_WEIGHT = 10_000


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


def parse_weight(annotations: Mapping[str, Any] | None) -> int | str | None:
    """The ``gobalancer.io/weight`` annotation: its weight, None when absent, or why it is refused."""
    raw = (annotations or {}).get(WEIGHT_ANNOTATION)
    if raw is None:
        return None
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_WEIGHT:
        return f"{WEIGHT_ANNOTATION}={raw!r} is not a weight (an integer 1..{MAX_WEIGHT})"
    return int(text)


def pod_of(endpoint: Mapping[str, Any]) -> str | None:
    """The name of the Pod an endpoint belongs to (its ``targetRef``), if it is one."""
    ref = endpoint.get("targetRef") or {}
    name = ref.get("name")
    return str(name) if ref.get("kind") == "Pod" and name else None


def slices_backends(
    slices: Iterable[Mapping[str, Any]],
    port_name: str = "",
    *,
    weight: int = 1,
    pod_weights: Mapping[str, int] | None = None,
    pool: str = DEFAULT_POOL,
) -> tuple[dict[str, Backend], list[str]]:
    """Merge raw (camelCase) EndpointSlices into backends; also returns one problem line per bad slice.

    Weight: the endpoint's Pod's annotation (``pod_weights``, by pod name), else ``weight`` (the
    Service's annotation, or 1)."""
    out: dict[str, Backend] = {}
    pod_weights = pod_weights or {}
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
            pod = pod_of(endpoint)
            w = pod_weights.get(pod, weight) if pod is not None else weight
            out[address] = Backend(address=address, origin="kubernetes", state=state, weight=w, pool=pool)
    return out, problems


class _Gone(Exception):
    """The resourceVersion expired (410): list again."""


class KubernetesSource:
    origin: Origin = "kubernetes"
    fields: tuple[str, ...] = ("weight", "state", "pool")  # readiness drives draining

    def __init__(
        self,
        config: KubernetesDiscoveryConfig,
        *,
        backoff_cap: float = 5.0,
        service: KubernetesServiceConfig | None = None,
    ) -> None:
        """The Service ``config.service`` into the default pool, or ``service`` (one of
        ``config.services``) into its pool; the API connection settings are ``config``'s."""
        if service is None:
            if not config.service:
                raise ValueError("discovery.kubernetes.service must be set for kubernetes discovery")
            service = KubernetesServiceConfig(
                service=config.service, namespace=config.namespace, port=config.port_name, pool=DEFAULT_POOL
            )
        self.config = config
        self.namespace = service.namespace
        self.service_name = service.service
        self.port_name = service.port
        self.pool = service.pool
        self.selector = f"{SERVICE_LABEL}={self.service_name}"
        self.timeout = max(1, int(config.watch_timeout_sec))
        self.backoff_cap = backoff_cap
        self._stopping = threading.Event()
        self._watch: Any = None
        self._client: Any = None  # the ApiClient, made in _api() (Services and Pods are read through it)
        self._problems: set[str] = set()
        self.gone = 0  # relists after 410 Gone (tests)
        # Weights: the Service's annotation (read at every list and watch restart), else 1; a Pod's
        # own annotation wins (its pods are listed with the list, a new one read when it appears).
        self._weight = 1
        self._pod_selector: str | None = None  # the Service's pod selector ("" = none: pods read one by one)
        self._pods: dict[str, int | None] = {}  # pod name -> its weight annotation (None: none or invalid)
        self._weight_problems: set[str] = set()

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
        self._client = client.ApiClient(configuration=configuration)
        return client.DiscoveryV1Api(self._client)

    def _get(self, path: str, **query: str) -> Any:
        """A core API read (``/api/v1/...``), decoded from raw JSON; None when it does not exist (404).

        Through the client's generic request path, not ``CoreV1Api``: that one module costs ~80 MB of
        memory and ~4 s of import for the two reads done here."""
        request = self._client.param_serialize(
            method="GET",
            resource_path=path,
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._client.call_api(*request, _request_timeout=(5, 30))
        data = response.read()
        if response.status == 404:
            return None
        if not 200 <= response.status <= 299:
            raise RuntimeError(f"GET {path}: HTTP {response.status}: {data[:200]!r}")
        return msgspec.json.decode(data)

    def _problem(self, problem: str) -> None:
        if problem not in self._weight_problems:
            self._weight_problems.add(problem)
            log.warning("weight annotation ignored", problem=problem)

    def _read_service(self) -> bool:
        """The Service's weight annotation and pod selector; True when its weight changed."""
        service = self._get(f"/api/v1/namespaces/{self.namespace}/services/{self.service_name}") or {}
        weight = parse_weight((service.get("metadata") or {}).get("annotations"))
        if isinstance(weight, str):
            self._problem(f"service {self.service_name}: {weight}")
            weight = None
        selector = (service.get("spec") or {}).get("selector") or {}
        self._pod_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        before, self._weight = self._weight, weight or 1
        return before != self._weight

    def _pod_weight(self, pod: Mapping[str, Any] | None) -> int | None:
        meta = (pod or {}).get("metadata") or {}
        weight = parse_weight(meta.get("annotations"))
        if isinstance(weight, str):
            self._problem(f"pod {meta.get('name', '?')}: {weight}")
            return None
        return weight

    def _list_pods(self) -> None:
        """Every pod of the Service (its selector) with its weight annotation: one request per list."""
        self._pods = {}
        if not self._pod_selector:
            return
        body = self._get(f"/api/v1/namespaces/{self.namespace}/pods", labelSelector=self._pod_selector)
        for pod in (body or {}).get("items") or []:
            self._pods[str(pod["metadata"]["name"])] = self._pod_weight(pod)

    def _pod_weights(self, slices: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """The weights of the pods the slices refer to; a pod not seen yet is read (once)."""
        referenced = {p for s in slices.values() for e in s.get("endpoints") or [] if (p := pod_of(e)) is not None}
        for name in referenced - self._pods.keys():
            self._pods[name] = self._pod_weight(self._get(f"/api/v1/namespaces/{self.namespace}/pods/{name}"))
        if len(self._pods) > len(referenced):
            self._pods = {n: w for n, w in self._pods.items() if n in referenced}
        return {n: w for n, w in self._pods.items() if w is not None}

    def _emit(self, loop: asyncio.AbstractEventLoop, publish: Publish, slices: Mapping[str, Mapping[str, Any]]) -> None:
        backends, problems = slices_backends(
            slices.values(),
            self.port_name,
            weight=self._weight,
            pod_weights=self._pod_weights(slices),
            pool=self.pool,
        )
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
            self.namespace, label_selector=self.selector, _request_timeout=(5, 30), _preload_content=False
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
                self.namespace,
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
                self._read_service()
                self._list_pods()
                rv, slices = self._list(api)
                emit(slices)
                log.info("endpoint slices listed", service=self.service_name, pool=self.pool, slices=len(slices), rv=rv)
                backoff.reset()
                while not self._stopping.is_set():
                    rv = self._watch_once(api, rv, slices, emit)  # ended normally: watch again from rv
                    if not self._stopping.is_set() and self._read_service():  # (its weight, now and then)
                        emit(slices)
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


def configured_services(config: KubernetesDiscoveryConfig) -> list[KubernetesServiceConfig | None]:
    """The Services to follow: ``service`` (None here: the default pool's) if set, then ``services``."""
    out: list[KubernetesServiceConfig | None] = [None] if config.service else []
    out.extend(config.services)
    if not out:
        raise ValueError(
            "discovery.kubernetes.service or discovery.kubernetes.services must be set for kubernetes discovery"
        )
    return out


class KubernetesServicesSource:
    """Several Services, each followed by its own :class:`KubernetesSource` (its own list/watch thread)
    into its pool. Publishes the union once every one of them has listed (before that, nothing, as a
    single source does); an address two Services share goes to the first in the configured order
    (``service``, then ``services`` in order), the other is logged."""

    origin: Origin = "kubernetes"
    fields: tuple[str, ...] = KubernetesSource.fields

    def __init__(self, config: KubernetesDiscoveryConfig, *, backoff_cap: float = 5.0) -> None:
        self.sources = [
            KubernetesSource(config, backoff_cap=backoff_cap, service=entry) for entry in configured_services(config)
        ]
        self._sets: list[dict[str, Backend] | None] = [None] * len(self.sources)
        self._clashes: set[str] = set()

    def _union(self) -> dict[str, Backend] | None:
        out: dict[str, Backend] = {}
        clashes: set[str] = set()
        for i, backends in enumerate(self._sets):
            if backends is None:
                return None
            for address, backend in backends.items():
                if address in out:
                    clashes.add(f"{address}: {self.sources[i].service_name} (pool {backend.pool}) ignored")
                    continue
                out[address] = backend
        for clash in sorted(clashes - self._clashes):
            log.warning("address in two Services' endpoints; the first configured wins", clash=clash)
        self._clashes = clashes
        return out

    async def run(self, publish: Publish) -> None:
        def publisher(i: int) -> Publish:
            def published(backends: Mapping[str, Backend], settings: object = None) -> None:
                self._sets[i] = dict(backends)
                union = self._union()
                if union is not None:
                    publish(union)

            return published

        tasks = [asyncio.create_task(src.run(publisher(i))) for i, src in enumerate(self.sources)]
        try:
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(tasks)
