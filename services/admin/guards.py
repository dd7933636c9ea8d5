"""Bearer-token auth and strict request-body validation, run before any handler."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from services.admin.problems import InvalidRequest, Unauthorized, describe_validation
from shared.config import AdminConfig

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Always open, so probes work with protect_reads on. Routes with ``opt["public"]`` (the dashboard page
# and its assets, which hold no data) are open to safe methods too.
OPEN_PATHS = frozenset({"/health"})


def token_guard(admin: AdminConfig) -> Any:
    """A Litestar guard: with ``admin.token`` set, mutating calls (and reads if protect_reads) need it."""
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


async def strict_body(request: Request[Any, Any, Any]) -> None:
    """A ``before_request`` hook: decode the body strictly against the route's request Struct.

    Litestar converts bodies leniently (``"5"`` would become the weight 5); the API promises exact
    types, so the route names its Struct in ``opt["body"]`` and the body is checked here first. Litestar
    caches the body, so its own decoding afterwards reads the same bytes. The Content-Type is not
    checked: clients of the original API (``curl -d``) send JSON as form-encoded.
    """
    body_type = request.route_handler.opt.get("body")
    if body_type is None:
        return
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("body", "a JSON object is required")
    try:
        msgspec.json.decode(raw, type=body_type, strict=True)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise describe_validation(exc, tuple(body_type.__struct_fields__)) from None
