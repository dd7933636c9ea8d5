"""Hostile calls to the admin API (issue 15 items 4-7), each with the status and the problem ``field``
the admin must answer. Nothing a refused call names may be stored.

The cases are built from the suite's own addresses (the admin's, Redis', a proxy's): a backend at one
of them would let a client of the proxy reach them through the data plane. ``expect`` 201 marks the
controls (a same-origin JSON call must still work).
"""

from __future__ import annotations

import json
from typing import NamedTuple

JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
TEXT = {"content-type": "text/plain"}
NEW = b'{"address": "10.20.30.40:80"}'


class AdminCase(NamedTuple):
    name: str
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    expect: int
    field: str | None = None  # the problem document's ``field``
    stores: str | None = None  # the address a refused call would have stored (checked absent)


def _add(address: str) -> bytes:
    return json.dumps({"address": address}).encode()


def admin_corpus(admin: str, redis: str, proxy: str) -> list[AdminCase]:
    """``admin``, ``redis``, ``proxy``: ``host:port`` of the suite's own listeners."""
    admin_port = admin.rsplit(":", 1)[1]
    proxy_port = proxy.rsplit(":", 1)[1]
    n = "10.20.30.40:80"
    return [
        # -- item 4: what a web page can send (CSRF) and a rebound name (DNS rebinding)
        AdminCase("text/plain JSON", "POST", "/backends", NEW, TEXT, 415, "content-type", n),
        AdminCase(
            "text/plain;charset JSON",
            "POST",
            "/backends",
            NEW,
            {"content-type": "text/plain;charset=UTF-8"},
            415,
            "content-type",
            n,
        ),
        AdminCase("form-encoded JSON", "POST", "/backends", NEW, FORM, 415, "content-type", n),
        AdminCase(
            "form fields", "POST", "/backends", b"address=10.20.30.40%3A80&weight=1", FORM, 415, "content-type", n
        ),
        AdminCase(
            "multipart",
            "POST",
            "/backends",
            b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--b--',
            {"content-type": "multipart/form-data; boundary=b"},
            415,
            "content-type",
            n,
        ),
        AdminCase("no content type", "POST", "/backends", NEW, {}, 415, "content-type", n),
        AdminCase("text/plain drain", "POST", f"/backends/{n}/drain", b"", TEXT, 415, "content-type"),
        AdminCase("text/plain algorithm", "PUT", "/algorithm", b'{"algorithm": "p2c"}', TEXT, 415, "content-type"),
        AdminCase(
            "foreign Origin", "POST", "/backends", NEW, {**JSON, "origin": "http://evil.example"}, 403, "origin", n
        ),
        AdminCase("null Origin", "POST", "/backends", NEW, {**JSON, "origin": "null"}, 403, "origin", n),
        AdminCase(
            "Origin of the proxy's port",
            "POST",
            "/backends",
            NEW,
            {**JSON, "origin": f"http://127.0.0.1:{proxy_port}"},
            403,
            "origin",
            n,
        ),
        AdminCase("foreign Origin, read", "GET", "/backends", None, {"origin": "http://evil.example"}, 403, "origin"),
        AdminCase("foreign Host", "POST", "/backends", NEW, {**JSON, "host": "evil.example"}, 403, "host", n),
        AdminCase(
            "rebound Host, read", "GET", "/backends", None, {"host": f"rebind.evil.example:{admin_port}"}, 403, "host"
        ),
        # -- item 5: the suite's own listeners as backends
        AdminCase("admin as backend", "POST", "/backends", _add(admin), JSON, 400, "address", admin),
        AdminCase(
            "admin as localhost",
            "POST",
            "/backends",
            _add(f"localhost:{admin_port}"),
            JSON,
            400,
            "address",
            f"localhost:{admin_port}",
        ),
        AdminCase(
            "admin as 0.0.0.0",
            "POST",
            "/backends",
            _add(f"0.0.0.0:{admin_port}"),
            JSON,
            400,
            "address",
            f"0.0.0.0:{admin_port}",
        ),
        AdminCase(
            "admin as IPv4-mapped", "POST", "/backends", _add(f"[::ffff:127.0.0.1]:{admin_port}"), JSON, 400, "address"
        ),
        AdminCase("redis as backend", "POST", "/backends", _add(redis), JSON, 400, "address", redis),
        AdminCase("proxy as backend", "POST", "/backends", _add(proxy), JSON, 400, "address", proxy),
        # -- item 6: bodies that are not UTF-8
        AdminCase("latin-1 body", "POST", "/backends", b'{"address": "caf\xe9.example:80"}', JSON, 400, "body"),
        AdminCase(
            "UTF-16 body", "POST", "/backends", '{"address": "10.20.30.40:80"}'.encode("utf-16"), JSON, 400, "body", n
        ),
        AdminCase("overlong UTF-8", "POST", "/backends", b'{"address": "\xc0\xaf:80"}', JSON, 400, "body"),
        AdminCase("trailing continuation byte", "POST", "/backends", NEW + b"\x80", JSON, 400, "body", n),
        AdminCase("non-UTF-8 weight", "PUT", f"/backends/{n}", b'{"weight": 1, "x": "\xff"}', JSON, 400, "body"),
        # -- item 7: IPv6 zone ids that are not RFC 6874 unreserved characters
        AdminCase(
            "zone id markup",
            "POST",
            "/backends",
            _add("[fe80::1%<img src=x onerror=alert(1)>]:80"),
            JSON,
            400,
            "address",
        ),
        AdminCase("zone id newline", "POST", "/backends", _add("[fe80::1%eth0\n]:80"), JSON, 400, "address"),
        AdminCase(
            "zone id terminal escape", "POST", "/backends", _add("[fe80::1%\x1b[31mred]:80"), JSON, 400, "address"
        ),
        AdminCase("zone id NUL", "POST", "/backends", _add("[fe80::1%eth0\x00]:80"), JSON, 400, "address"),
        AdminCase("zone id in the path", "GET", "/backends/%5Bfe80%3A%3A1%25eth0%0A%5D%3A80", None, {}, 400, "address"),
        # -- controls
        AdminCase(
            "same-origin JSON", "POST", "/backends", _add("10.20.30.50:80"), {**JSON, "origin": f"http://{admin}"}, 201
        ),
        AdminCase("zone id interface name", "POST", "/backends", _add("[fe80::1%eth0]:80"), JSON, 201),
    ]
