"""Who may call what: same-site checks (Host, Origin, Content-Type), the bearer token, and strict bodies.

- :func:`site_check` refuses what a web page the operator happens to open could send: a ``Host`` that
  is not one of the admin's own names (DNS rebinding; 403), an ``Origin`` of another site (CSRF; 403),
  and a mutating call whose body is not ``application/json`` (415; a cross-site form or ``text/plain``
  POST is not JSON, and a browser cannot send JSON across sites without asking first).
- :func:`token_check` checks ``Authorization: Bearer`` when ``admin.token`` is set.
- :class:`StrictBody` decodes a request body once, strictly, into the handler's ``data`` type:
  ``"weight": "5"`` is a 400 naming ``weight``, not 5.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar.connection import ASGIConnection
from litestar.dto import MsgspecDTO
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Reference, Schema
from litestar.typing import FieldDefinition

from services.admin.problems import Forbidden, InvalidRequest, Unauthorized, UnsupportedMediaType, describe_validation
from services.admin.schemas import RequestBody
from shared.addresses import parse_address
from shared.config import AdminConfig
from shared.config.durations import dec_hook

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Always open, so probes work with protect_reads on. Routes with ``opt["public"]`` (the dashboard page
# and its assets, which hold no data) are open to safe methods too.
OPEN_PATHS = frozenset({"/health"})
JSON = "application/json"


def _split_host(value: str) -> tuple[str, str]:
    """``Host`` (or an Origin's netloc) as (host without brackets, lower case; port or "")."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = value.partition(":")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


Check = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


def admin_guard(admin: AdminConfig) -> Any:
    """The app's one Litestar guard: :func:`site_check`, then :func:`token_check`. Async, and one: Litestar
    runs a sync guard in a worker thread, and copies the route handler for every guard it calls."""
    checks = (site_check(admin), token_check(admin))

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        for check in checks:
            check(connection, handler)

    return guard


def site_check(admin: AdminConfig) -> Check:
    """Own Host names only, no foreign Origin, JSON bodies on mutating calls."""
    listen_host = parse_address(admin.listen_address, allow_empty_host=True).host.lower()
    allowed = {h.lower() for h in admin.allowed_hosts}
    any_host = "*" in allowed

    def own_host(host: str, port: str) -> bool:
        # An IP literal cannot be rebound (the page's origin is that IP): only names need checking.
        return (
            any_host
            or _is_ip(host)
            or host == "localhost"
            or host.endswith(".localhost")
            or host == listen_host
            or host in allowed
            or f"{host}:{port}" in allowed
        )

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        headers = connection.headers
        host_header = headers.get("host", "")
        if host_header and not own_host(*_split_host(host_header)):
            raise Forbidden(
                "host",
                f"Host {host_header!r} is not one of this admin's names; add it to admin.allowed_hosts to allow it",
            )
        origin = headers.get("origin")
        if origin is not None:
            # Same origin: the page's scheme://host:port is this request's Host (a page on another port of
            # the same host, e.g. a backend served through the proxy, is another site).
            netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
            if not netloc or (netloc != host_header.lower() and netloc not in allowed):
                raise Forbidden("origin", f"requests from the origin {origin!r} (another site) are refused")
        method = connection.scope.get("method", "GET")
        if method in SAFE_METHODS:
            return
        content_type = headers.get("content-type")
        takes_body = "data" in handler.parsed_fn_signature.parameters
        if content_type is None and not takes_body:
            return
        media_type = (content_type or "").partition(";")[0].strip().lower()
        if media_type != JSON:
            raise UnsupportedMediaType(
                f"the body must be {JSON} (got {media_type or 'no Content-Type'}); with curl: -H 'Content-Type: {JSON}'"
            )

    return guard


def token_check(admin: AdminConfig) -> Check:
    """With ``admin.token`` set, mutating calls (and reads if protect_reads) need it."""
    expected = admin.token.encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if not expected:
            return
        method = connection.scope.get("method", "GET")
        public = connection.scope["path"] in OPEN_PATHS or handler.opt.get("public", False)
        if method in SAFE_METHODS and (not admin.protect_reads or public):
            return
        header = connection.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise Unauthorized("this call needs an Authorization: Bearer <token> header")
        # Compare in constant time; the scheme check leaks nothing about the token.
        ok = hmac.compare_digest(given.strip().encode(), expected)
        if scheme.lower() != "bearer" or not ok:
            raise Unauthorized("invalid bearer token")

    return guard


def decode_strict(raw: bytes, body_type: type[msgspec.Struct]) -> Any:
    """``raw`` decoded strictly into ``body_type``; InvalidRequest naming the field otherwise."""
    if not raw.strip():
        raise InvalidRequest("body", "a JSON object is required")
    try:
        return msgspec.json.decode(raw, type=body_type, strict=True, dec_hook=dec_hook)  # (hook: durations)
    except UnicodeDecodeError as exc:
        raise InvalidRequest("body", f"not UTF-8 text (byte {exc.start}); JSON must be UTF-8") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise describe_validation(exc, tuple(body_type.__struct_fields__)) from None


class StrictBody(MsgspecDTO[RequestBody]):
    """The app's DTO for request bodies: the handler's ``data`` annotation is the one declaration of a
    body's type (and of its OpenAPI schema); the bytes are decoded once, strictly, by :func:`decode_strict`."""

    def decode_bytes(self, value: bytes) -> Any:
        handler_id = self.asgi_connection.route_handler.handler_id
        backend = self._dto_backends[handler_id]["data_backend"]
        try:
            value.decode()  # (msgspec reports bad UTF-8 inside strings only)
        except UnicodeDecodeError as exc:
            raise InvalidRequest("body", f"not UTF-8 text (byte {exc.start}); JSON must be UTF-8") from None
        return decode_strict(value, backend.model_type)

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any
    ) -> Reference | Schema:
        key = "data_backend" if field_definition.name == "data" else "return_backend"
        backend = cls._dto_backends[handler_id][key]  # type: ignore[literal-required]
        schema: Reference | Schema = schema_creator.for_field_definition(
            FieldDefinition.from_annotation(backend.model_type)
        )
        return schema
