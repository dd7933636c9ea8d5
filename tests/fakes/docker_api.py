"""A small Docker Engine API server on a unix socket, for driving the real ``docker`` SDK in tests.

It speaks what the SDK sends (see shared/docs/platform.md): ``GET /version`` and ``/_ping``,
``GET /v1.41/containers/json`` (``all``, ``filters`` with ``label``/``status``/``id``/``name``),
``GET /v1.41/containers/{id}/json`` (404 for an unknown id) and the chunked JSON-lines
``GET /v1.41/events`` stream (``since`` replay from a buffer of the last 256 events, ``filters``
with ``type``/``label``/``event``/``container``; ``health_status`` matches by prefix like the
engine). Containers are plain dicts shaped like ``docker inspect``; the test changes them through
methods that also emit the events the engine would (``start``, ``kill``/``die``/``stop``,
``pause``, ``health_status: healthy`` ...).

Faults: :meth:`drop_streams` cuts every open event stream without a terminating chunk (the
client sees a broken stream), ``record_events=False`` changes state without events (as if they
were lost), :meth:`stop`/:meth:`start` take the socket away and bring it back (an engine restart).

Usage::

    engine = FakeDockerEngine(tmp_path / "docker.sock").start()
    cid = engine.add_container("web1", labels={"lb.enable": "true"}, networks={"bridge": "172.17.0.2"})
    client = docker.DockerClient(base_url=engine.url)
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_VERSION = "1.41"
_VERSIONED = re.compile(r"^/v[0-9.]+(/.*)$")
_END = object()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    engine: FakeDockerEngine


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet (and unix sockets have no address)
        pass

    def address_string(self) -> str:
        return "unix"

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", API_VERSION)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        engine = self.server.engine
        url = urlsplit(self.path)
        path = url.path
        m = _VERSIONED.match(path)
        if m:
            path = m.group(1)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        engine._count(path)
        if path == "/_ping":
            data = b"OK"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/version":
            self._json(200, {"ApiVersion": API_VERSION, "Version": "20.10.24", "MinAPIVersion": "1.12", "Os": "linux"})
        elif path == "/containers/json":
            filters = json.loads(query.get("filters") or "{}")
            show_all = query.get("all") in ("1", "true", "True")
            self._json(200, engine._list(filters, show_all))
        elif (cm := re.fullmatch(r"/containers/([^/]+)/json", path)) is not None:
            found = engine.inspect(cm.group(1))
            if found is None:
                self._json(404, {"message": f"No such container: {cm.group(1)}"})
            else:
                self._json(200, found)
        elif path == "/events":
            self._events(query)
        else:
            self._json(404, {"message": f"page not found: {path}"})

    def _events(self, query: Mapping[str, str]) -> None:
        engine = self.server.engine
        filters = json.loads(query.get("filters") or "{}")
        since = float(query["since"]) if query.get("since") else None
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Api-Version", API_VERSION)
        self.end_headers()
        self.wfile.flush()
        inbox: queue.Queue[Any] = queue.Queue()
        backlog = engine._subscribe(inbox, since)
        try:
            for event in backlog:
                if _event_matches(event, filters):
                    self._chunk(event)
            while True:
                item = inbox.get()
                if item is _END:
                    # Cut the connection without the terminating chunk: a broken stream.
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if _event_matches(item, filters):
                    self._chunk(item)
        except OSError:
            self.close_connection = True
        finally:
            engine._unsubscribe(inbox)

    def _chunk(self, event: Mapping[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _label_matches(labels: Mapping[str, str], wanted: Iterable[str]) -> bool:
    for spec in wanted:
        key, sep, value = spec.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _values(filters: Mapping[str, Any], name: str) -> list[str]:
    raw = filters.get(name)
    if raw is None:
        return []
    if isinstance(raw, dict):  # the old {"value": true} form
        return [k for k, v in raw.items() if v]
    return list(raw) if isinstance(raw, list) else [raw]


def _event_matches(event: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    types = _values(filters, "type")
    if types and event["Type"] not in types:
        return False
    labels = _values(filters, "label")
    if labels and not _label_matches(event["Actor"]["Attributes"], labels):
        return False
    actions = _values(filters, "event")
    if actions:
        action = event["Action"]
        fuzzy = any(a in ("health_status", "exec_create", "exec_start") for a in actions)
        if not any(action == a or (fuzzy and action.startswith(a)) for a in actions):
            return False
    containers = _values(filters, "container")
    return not containers or any(c in (event["id"], event["Actor"]["Attributes"].get("name")) for c in containers)


class FakeDockerEngine:
    def __init__(self, socket_path: str | os.PathLike[str]) -> None:
        self.socket_path = str(socket_path)
        self.containers: dict[str, dict[str, Any]] = {}
        self.record_events = True  # False: state changes emit no events (as if lost)
        self.requests: dict[str, int] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=256)
        self._subscribers: list[queue.Queue[Any]] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> FakeDockerEngine:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        server = _Server(self.socket_path, _Handler)
        server.engine = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take the engine away (streams cut, socket removed); state is kept for :meth:`start`."""
        server, self._server = self._server, None
        if server is None:
            return
        self.drop_streams()
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def __enter__(self) -> FakeDockerEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping -----------------------------------------------------------------------------

    def _count(self, path: str) -> None:
        key = "/containers/{id}/json" if re.fullmatch(r"/containers/[^/]+/json", path) else path
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1

    @property
    def streams(self) -> int:
        """Event streams open right now."""
        with self._lock:
            return len(self._subscribers)

    def _subscribe(self, inbox: queue.Queue[Any], since: float | None) -> list[dict[str, Any]]:
        with self._lock:
            self._subscribers.append(inbox)
            if since is None:
                return []
            return [e for e in self._events if e["time"] >= since]

    def _unsubscribe(self, inbox: queue.Queue[Any]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(inbox)

    def drop_streams(self) -> None:
        """Cut every open event stream (the client sees the stream break)."""
        with self._lock:
            for inbox in self._subscribers:
                inbox.put(_END)

    def emit(self, container_id: str, action: str) -> dict[str, Any]:
        """Publish an event for a container (also used for duplicates and replays in tests)."""
        c = self.containers[container_id]
        now = time.time_ns()
        event = {
            "status": action,
            "id": container_id,
            "from": c["Config"]["Image"],
            "Type": "container",
            "Action": action,
            "Actor": {
                "ID": container_id,
                "Attributes": {**c["Config"]["Labels"], "image": c["Config"]["Image"], "name": c["Name"][1:]},
            },
            "scope": "local",
            "time": now // 1_000_000_000,
            "timeNano": now,
        }
        self.send(event)
        return event

    def send(self, event: dict[str, Any]) -> None:
        """Deliver a ready-made event (e.g. an exact duplicate of an earlier one)."""
        with self._lock:
            self._events.append(event)
            for inbox in self._subscribers:
                inbox.put(event)

    def _emit(self, container_id: str, *actions: str) -> None:
        if self.record_events:
            for action in actions:
                self.emit(container_id, action)

    # -- containers ------------------------------------------------------------------------------

    def add_container(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        networks: Mapping[str, str] | None = None,
        exposed: Iterable[str] = (),
        health: str | None = None,
        running: bool = True,
        image: str = "demo:local",
    ) -> str:
        """Create (and by default start) a container; ``networks`` maps network name -> IPv4 address."""
        container_id = secrets.token_hex(32)
        self.containers[container_id] = {
            "Id": container_id,
            "Name": f"/{name}",
            "Created": "2026-11-28T00:00:00Z",
            "Config": {
                "Image": image,
                "Labels": dict(labels or {}),
                "ExposedPorts": {spec if "/" in spec else f"{spec}/tcp": {} for spec in exposed} or None,
            },
            "State": {
                "Status": "created",
                "Running": False,
                "Paused": False,
                "Restarting": False,
                "Health": {"Status": health, "FailingStreak": 0, "Log": []} if health else None,
            },
            "NetworkSettings": {
                "Networks": {
                    net: {"IPAddress": "", "GlobalIPv6Address": "", "_ip": ip} for net, ip in (networks or {}).items()
                }
            },
        }
        self._emit(container_id, "create")
        if running:
            self.start_container(container_id)
        return container_id

    def _set(self, container_id: str, **state: Any) -> None:
        with self._lock:
            self.containers[container_id]["State"].update(state)

    def _wire_networks(self, container_id: str, up: bool) -> None:
        for settings in self.containers[container_id]["NetworkSettings"]["Networks"].values():
            settings["IPAddress"] = settings["_ip"] if up else ""

    def start_container(self, container_id: str) -> None:
        self._wire_networks(container_id, True)
        self._set(container_id, Status="running", Running=True, Paused=False)
        self._emit(container_id, "start")

    def stop_container(self, container_id: str) -> None:
        self._wire_networks(container_id, False)
        self._set(container_id, Status="exited", Running=False, Paused=False)
        self._emit(container_id, "kill", "die", "stop")

    def pause(self, container_id: str) -> None:
        self._set(container_id, Status="paused", Paused=True)
        self._emit(container_id, "pause")

    def unpause(self, container_id: str) -> None:
        self._set(container_id, Status="running", Paused=False)
        self._emit(container_id, "unpause")

    def set_health(self, container_id: str, status: str) -> None:
        with self._lock:
            self.containers[container_id]["State"]["Health"] = {"Status": status, "FailingStreak": 0, "Log": []}
        self._emit(container_id, f"health_status: {status}")

    def remove(self, container_id: str) -> None:
        with self._lock:
            self.containers.pop(container_id)

    # -- API views -------------------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any] | None:
        with self._lock:
            for cid, c in self.containers.items():
                if cid == ref or (len(ref) >= 12 and cid.startswith(ref)) or c["Name"] == f"/{ref}":
                    return _public(c)
        return None

    def _list(self, filters: Mapping[str, Any], show_all: bool) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            for cid, c in self.containers.items():
                state = c["State"]
                if not show_all and not state["Running"]:
                    continue
                labels = _values(filters, "label")
                if labels and not _label_matches(c["Config"]["Labels"], labels):
                    continue
                statuses = _values(filters, "status")
                if statuses and state["Status"] not in statuses:
                    continue
                ids = _values(filters, "id")
                if ids and not any(cid.startswith(i) for i in ids):
                    continue
                public = _public(c)
                out.append(
                    {
                        "Id": cid,
                        "Names": [c["Name"]],
                        "Image": c["Config"]["Image"],
                        "State": state["Status"],
                        "Status": "Up" if state["Running"] else "Exited (0)",
                        "Labels": c["Config"]["Labels"],
                        "NetworkSettings": public["NetworkSettings"],
                    }
                )
        return out


def _public(container: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy without the fake's private keys."""
    data: dict[str, Any] = json.loads(json.dumps(container))
    for settings in data["NetworkSettings"]["Networks"].values():
        settings.pop("_ip", None)
    return data


def short_socket_path(directory: str | os.PathLike[str]) -> Path:
    """A socket path short enough for AF_UNIX (108 bytes) even inside a deep temp directory."""
    path = Path(directory) / "docker.sock"
    if len(str(path)) < 100:
        return path
    return Path("/tmp") / f"fake-docker-{secrets.token_hex(6)}.sock"
