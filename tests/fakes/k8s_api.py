"""A small Kubernetes API server for ``discovery.k8s.io/v1`` EndpointSlices, on 127.0.0.1.

It answers what the real ``kubernetes`` client sends (see shared/docs/platform.md):
``GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices?labelSelector=...`` as a list (with
``metadata.resourceVersion``), and with ``watch=true&resourceVersion=RV&allowWatchBookmarks=true
[&timeoutSeconds=N]`` as a chunked JSON-lines watch: the events after RV are replayed from history,
then new ones streamed; the stream ends cleanly after ``timeoutSeconds``. A watch from a
resourceVersion older than the last :meth:`compact` gets an ``ERROR`` event with code 410.

The test drives it: :meth:`apply` (ADDED/MODIFIED), :meth:`delete` (DELETED), :meth:`bookmark`,
:meth:`close_watches` (a clean close), :meth:`expire_watches` (ERROR 410 on open watches),
:meth:`hold_watches`/:meth:`release_watches` (make a re-watch wait), and reads
``lists`` / ``watches`` (the query of every request) to see what the client did.
"""

from __future__ import annotations

import copy
import json
import queue
import re
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_PATH = re.compile(r"^/apis/discovery\.k8s\.io/v1/namespaces/([^/]+)/endpointslices$")
_CORE = re.compile(r"^/api/v1/namespaces/([^/]+)/(services|pods)(?:/([^/]+))?$")
_CLOSE = object()
_GONE = object()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: FakeKubernetesAPI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        core = _CORE.match(url.path)
        if core is not None:
            self._core(core.group(1), core.group(2), core.group(3), query)
            return
        m = _PATH.match(url.path)
        if m is None:
            self._json(404, _status(404, "NotFound", f"the server could not find {url.path}"))
            return
        namespace = m.group(1)
        selector = _parse_selector(query.get("labelSelector", ""))
        if query.get("watch") in ("true", "1"):
            self._watch(namespace, selector, query)
            return
        with api._lock:
            api.lists.append(query)
            items = [copy.deepcopy(s) for s in api._slices.values() if _selected(s, namespace, selector)]
            rv = str(api._rv)
        self._json(
            200,
            {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": rv},
                "items": items,
            },
        )

    def _core(self, namespace: str, kind: str, name: str | None, query: Mapping[str, str]) -> None:
        """Services and Pods (what the source reads for the weight annotations): get one, list pods."""
        api = self.server.api
        with api._lock:
            api.core_requests.append(f"{kind}/{name}" if name else f"{kind}?{query.get('labelSelector', '')}")
            objects = api._services if kind == "services" else api._pods
            if name is not None:
                obj = objects.get((namespace, name))
                if obj is None:
                    self._json(404, _status(404, "NotFound", f'{kind} "{name}" not found'))
                else:
                    self._json(200, copy.deepcopy(obj))
                return
            selector = _parse_selector(query.get("labelSelector", ""))
            items = [copy.deepcopy(o) for o in objects.values() if _selected(o, namespace, selector)]
            rv = str(api._rv)
        self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})

    def _watch(self, namespace: str, selector: Mapping[str, str], query: Mapping[str, str]) -> None:
        api = self.server.api
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        inbox: queue.Queue[Any] = queue.Queue()
        api._gate.wait()
        with api._lock:
            api.watches.append(query)
            start = int(query.get("resourceVersion") or api._rv)
            expired = start < api._compacted
            backlog = [] if expired else [e for e in api._history if e[0] > start]
            api._watchers.append((inbox, bookmarks))
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            if expired:
                self._chunk({"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {start}")})
                self._end()
                return
            for _, kind, obj in backlog:
                if kind == "BOOKMARK" or _selected(obj, namespace, selector):
                    self._chunk({"type": kind, "object": obj})
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    self._end()
                    return
                try:
                    item = inbox.get(timeout=wait)
                except queue.Empty:
                    continue
                if item is _CLOSE:
                    self._end()
                    return
                if item is _GONE:
                    self._chunk({"type": "ERROR", "object": _status(410, "Expired", "watch expired")})
                    self._end()
                    return
                kind, obj = item
                if kind == "BOOKMARK" or _selected(obj, namespace, selector):
                    self._chunk({"type": kind, "object": obj})
        except OSError:
            self.close_connection = True
        finally:
            with api._lock:
                api._watchers[:] = [w for w in api._watchers if w[0] is not inbox]

    def _chunk(self, event: Mapping[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _parse_selector(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip().lstrip("=")
    return out


def _selected(obj: Mapping[str, Any], namespace: str, selector: Mapping[str, str]) -> bool:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return meta.get("namespace") == namespace and all(labels.get(k) == v for k, v in selector.items())


def endpoint(
    address: str,
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    pod: str | None = None,
) -> dict[str, Any]:
    """An endpoint; ``pod``: the name of the Pod it belongs to (its ``targetRef``)."""
    conditions = {
        k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating)) if v is not None
    }
    out: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if pod is not None:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "default"}
    return out


class FakeKubernetesAPI:
    def __init__(self) -> None:
        self._slices: dict[tuple[str, str], dict[str, Any]] = {}
        self._history: list[tuple[int, str, dict[str, Any]]] = []
        self._watchers: list[tuple[queue.Queue[Any], bool]] = []
        self._rv = 100
        self._compacted = 0
        self._lock = threading.RLock()
        self.lists: list[dict[str, str]] = []
        self.watches: list[Mapping[str, str]] = []
        self._server: _Server | None = None
        self.port = 0
        self._gate = threading.Event()  # cleared: new watch requests wait (hold_watches)
        self._gate.set()
        self._services: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.core_requests: list[str] = []  # services/NAME, pods/NAME, pods?SELECTOR, in order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> FakeKubernetesAPI:
        """Serve on 127.0.0.1 (``port=self.port`` after :meth:`stop` brings the same URL back)."""
        server = _Server(("127.0.0.1", port), _Handler)
        server.api = self
        self._server = server
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._gate.set()
        server, self._server = self._server, None
        if server is not None:
            self.close_watches()
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeKubernetesAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watchers)

    @property
    def resource_version(self) -> int:
        return self._rv

    def _publish(self, kind: str, obj: dict[str, Any]) -> None:
        self._history.append((self._rv, kind, obj))
        for inbox, _ in self._watchers:
            inbox.put((kind, copy.deepcopy(obj)))

    def apply(
        self,
        name: str,
        endpoints: Iterable[Mapping[str, Any]],
        *,
        service: str = "web",
        namespace: str = "default",
        ports: Iterable[Mapping[str, Any]] = ({"name": "http", "port": 8080, "protocol": "TCP"},),
        address_type: str = "IPv4",
    ) -> int:
        """Create or replace a slice (ADDED or MODIFIED); returns its new resourceVersion."""
        with self._lock:
            self._rv += 1
            key = (namespace, name)
            kind = "MODIFIED" if key in self._slices else "ADDED"
            obj = {
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": str(self._rv),
                    "labels": {"kubernetes.io/service-name": service},
                },
                "addressType": address_type,
                "endpoints": [dict(e) for e in endpoints],
                "ports": [dict(p) for p in ports],
            }
            self._slices[key] = obj
            self._publish(kind, copy.deepcopy(obj))
            return self._rv

    def set_service(
        self,
        name: str,
        *,
        annotations: Mapping[str, str] | None = None,
        selector: Mapping[str, str] | None = None,
        namespace: str = "default",
    ) -> None:
        """Create or replace a Service (its annotations and pod selector; no watch event: not watched)."""
        with self._lock:
            self._rv += 1
            self._services[(namespace, name)] = {
                "kind": "Service",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": str(self._rv),
                    "annotations": dict(annotations or {}),
                },
                "spec": {"selector": dict(selector or {}), "ports": [{"name": "http", "port": 80}]},
            }

    def set_pod(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        namespace: str = "default",
    ) -> None:
        """Create or replace a Pod (labels and annotations are what the source reads)."""
        with self._lock:
            self._rv += 1
            self._pods[(namespace, name)] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": str(self._rv),
                    "labels": dict(labels or {}),
                    "annotations": dict(annotations or {}),
                },
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            }

    def delete_pod(self, name: str, *, namespace: str = "default") -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def delete(self, name: str, *, namespace: str = "default") -> int:
        with self._lock:
            self._rv += 1
            obj = self._slices.pop((namespace, name))
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._publish("DELETED", obj)
            return self._rv

    def bookmark(self) -> int:
        """Send a BOOKMARK with the current resourceVersion to watches that allow them."""
        with self._lock:
            obj = {
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._rv)},
            }
            for inbox, bookmarks in self._watchers:
                if bookmarks:
                    inbox.put(("BOOKMARK", copy.deepcopy(obj)))
            return self._rv

    def close_watches(self) -> None:
        """End every open watch cleanly (as the API server does at its timeout)."""
        with self._lock:
            for inbox, _ in self._watchers:
                inbox.put(_CLOSE)

    def hold_watches(self) -> None:
        """New watch requests wait (after their headers) until :meth:`release_watches`."""
        self._gate.clear()

    def release_watches(self) -> None:
        self._gate.set()

    def compact(self) -> None:
        """Forget history: a watch from any resourceVersion older than now gets 410 Gone."""
        with self._lock:
            self._history.clear()
            self._compacted = self._rv

    def expire_watches(self) -> None:
        """Send ERROR 410 on every open watch, then close it."""
        with self._lock:
            for inbox, _ in self._watchers:
                inbox.put(_GONE)


def serve_commands() -> None:
    """``python -m tests.fakes.k8s_api``: the fake in a process of its own (a test that measures its
    own event loop must not share a GIL with the API server). Prints its URL, then applies the JSON
    commands read from stdin, one a line: ``["apply", name, [address, ...]]``, ``["delete", name]``,
    ``["compact"]``; each answered with the resourceVersion (or 0) on stdout. Ends at end of input."""
    import sys

    api = FakeKubernetesAPI().start()
    print(api.url, flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            rv = 0
            if command[0] == "apply":
                rv = api.apply(command[1], [endpoint(a) for a in command[2]])
            elif command[0] == "delete":
                rv = api.delete(command[1])
            elif command[0] == "compact":
                api.compact()
            print(rv, flush=True)
    finally:
        api.stop()


if __name__ == "__main__":
    serve_commands()
