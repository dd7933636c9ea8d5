"""Errors as RFC 9457 problem documents (`application/problem+json`), each naming the field at fault."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from redis.exceptions import RedisError

from services.admin.schemas import Problem
from shared.config.errors import MISSING_FIELD, UNKNOWN_FIELD, join, named_field, soften, split_msgspec
from shared.logs import get_logger
from shared.store import (
    UNAVAILABLE,
    BackendDenied,
    BackendExists,
    BackendNotFound,
    OriginMismatch,
    PoolExists,
    PoolInUse,
    PoolNotFound,
)

log = get_logger("admin")

PROBLEM_JSON = "application/problem+json"
_TYPE = "urn:gobalancer:problem:"


class InvalidRequest(Exception):
    """A request that fails validation: 400, naming the field."""

    def __init__(self, field: str, detail: str) -> None:
        self.field, self.detail = field, detail
        super().__init__(f"{field}: {detail}")


class Unprocessable(Exception):
    """A well-formed body the API cannot apply (a route table that fails its checks): 422, naming the field
    (``routes[2].pool``)."""

    def __init__(self, field: str, detail: str) -> None:
        self.field, self.detail = field, detail
        super().__init__(f"{field}: {detail}")


class BackendInOtherPool(Exception):
    """A backend addressed under a pool it is not in: 404, naming the pool it is in."""

    def __init__(self, address: str, pool: str, actual: str) -> None:
        self.address, self.pool, self.actual = address, pool, actual
        where = "/backends" if actual == "default" else f"/pools/{actual}/backends"
        super().__init__(f"backend {address} is in pool {actual!r}, not {pool!r} (see {where})")


class Unauthorized(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class Forbidden(Exception):
    """Refused whoever asks: a foreign Host or Origin (403), naming the header."""

    def __init__(self, field: str, detail: str) -> None:
        self.field, self.detail = field, detail
        super().__init__(detail)


class UnsupportedMediaType(Exception):
    """A mutating call whose body is not JSON (415)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


def describe_validation(
    err: msgspec.ValidationError | msgspec.DecodeError, allowed: tuple[str, ...] = ()
) -> InvalidRequest:
    """Turn a msgspec error on a request body into the field it names and a readable problem."""
    if not isinstance(err, msgspec.ValidationError):
        return InvalidRequest("body", f"invalid JSON: {err}")
    problem, path = split_msgspec(err)
    if unknown := UNKNOWN_FIELD.match(problem):
        hint = f" (allowed: {', '.join(allowed)})" if allowed and not path else ""
        return InvalidRequest(join(path, unknown.group("field")), f"unknown field{hint}")
    if missing := MISSING_FIELD.match(problem):
        return InvalidRequest(join(path, missing.group("field")), "required field is missing")
    if named := named_field(problem):  # a Struct's own check, at the root or in a nested one
        return InvalidRequest(join(path, named[0] + named[1]), named[2])
    return InvalidRequest(path or "body", soften(problem))


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    kind: str,
    request: Request[Any, Any, Any] | None = None,
    field: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[Problem]:
    body = Problem(
        type=_TYPE + kind,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path if request is not None else None,
        field=field,
        errors=errors if errors is not None else ([{"field": field, "detail": detail}] if field else None),
    )
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {}))


Handler = Callable[[Request[Any, Any, Any], Any], Response[Problem]]


def _invalid(request: Request[Any, Any, Any], exc: InvalidRequest) -> Response[Problem]:
    return problem_response(
        400, "Invalid request", f"{exc.field}: {exc.detail}", kind="invalid-request", request=request, field=exc.field
    )


def _litestar_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    """Litestar's own validation (path and query parameters, and bodies it decoded itself)."""
    errors: list[dict[str, str]] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message = str(item.get("message", "invalid value"))
            key = str(item.get("key") or item.get("source") or "request")
            if key == "data":  # no body at all (a body that is there is decoded by guards.StrictBody)
                key, message = "body", "a JSON object is required"
            errors.append({"field": key, "detail": message.replace("Expected", "expected")})
    if not errors:
        errors.append({"field": "request", "detail": str(exc.detail)})
    first = errors[0]
    return problem_response(
        400,
        "Invalid request",
        f"{first['field']}: {first['detail']}",
        kind="invalid-request",
        request=request,
        field=first["field"],
        errors=errors,
    )


def _exists(request: Request[Any, Any, Any], exc: BackendExists) -> Response[Problem]:
    detail, pool = str(exc), exc.backend.pool
    if pool != request.path_params.get("pool", "default"):
        detail = f"{detail} in pool {pool!r} (an address serves one pool at a time)"
    return problem_response(409, "Backend exists", detail, kind="backend-exists", request=request, field="address")


def _unprocessable(request: Request[Any, Any, Any], exc: Unprocessable) -> Response[Problem]:
    return problem_response(
        422, "Invalid route table", f"{exc.field}: {exc.detail}", kind="invalid-table", request=request, field=exc.field
    )


def _other_pool(request: Request[Any, Any, Any], exc: BackendInOtherPool) -> Response[Problem]:
    return problem_response(404, "Backend not found", str(exc), kind="backend-not-found", request=request)


def _pool_exists(request: Request[Any, Any, Any], exc: PoolExists) -> Response[Problem]:
    return problem_response(409, "Pool exists", str(exc), kind="pool-exists", request=request, field="name")


def _pool_not_found(request: Request[Any, Any, Any], exc: PoolNotFound) -> Response[Problem]:
    return problem_response(404, "Pool not found", str(exc), kind="pool-not-found", request=request)


def _pool_in_use(request: Request[Any, Any, Any], exc: PoolInUse) -> Response[Problem]:
    return problem_response(409, "Pool in use", str(exc), kind="pool-in-use", request=request)


def _not_found(request: Request[Any, Any, Any], exc: BackendNotFound) -> Response[Problem]:
    return problem_response(404, "Backend not found", str(exc), kind="backend-not-found", request=request)


def _origin(request: Request[Any, Any, Any], exc: OriginMismatch) -> Response[Problem]:
    b = exc.backend
    detail = (
        f"backend {b.address} was found by {b.origin} discovery and may come back at its next reconcile; "
        "add ?force=true to remove it anyway"
    )
    return problem_response(
        409, "Backend owned by discovery", detail, kind="origin-mismatch", request=request, field="force"
    )


def _unauthorized(request: Request[Any, Any, Any], exc: Unauthorized) -> Response[Problem]:
    return problem_response(
        401,
        "Unauthorized",
        exc.detail,
        kind="unauthorized",
        request=request,
        headers={"WWW-Authenticate": 'Bearer realm="gobalancer-admin"'},
    )


def _forbidden(request: Request[Any, Any, Any], exc: Forbidden) -> Response[Problem]:
    return problem_response(403, "Forbidden", exc.detail, kind="forbidden", request=request, field=exc.field)


def _media_type(request: Request[Any, Any, Any], exc: UnsupportedMediaType) -> Response[Problem]:
    return problem_response(
        415, "Unsupported media type", exc.detail, kind="unsupported-media-type", request=request, field="content-type"
    )


def _denied(request: Request[Any, Any, Any], exc: BackendDenied) -> Response[Problem]:
    return problem_response(
        400, "Invalid request", f"address: {exc.reason}", kind="backend-denied", request=request, field="address"
    )


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Request failed")
    headers = dict(exc.headers or {})
    return problem_response(
        exc.status_code, title, str(exc.detail), kind=f"http-{exc.status_code}", request=request, headers=headers
    )


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    if not isinstance(exc, UNAVAILABLE):
        return _internal(request, exc)
    return problem_response(
        503,
        "Store unavailable",
        f"redis is unreachable: {exc or type(exc).__name__}",
        kind="store-unavailable",
        request=request,
        headers={"Retry-After": "1"},
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.error("unhandled error", path=request.url.path, method=request.method, error=repr(exc), exc_info=exc)
    return problem_response(
        500, "Internal error", "internal error; see the admin log", kind="internal", request=request
    )


EXCEPTION_HANDLERS: dict[type[Exception], Handler] = {
    InvalidRequest: _invalid,
    ValidationException: _litestar_validation,
    BackendExists: _exists,
    Unprocessable: _unprocessable,
    BackendInOtherPool: _other_pool,
    PoolExists: _pool_exists,
    PoolNotFound: _pool_not_found,
    PoolInUse: _pool_in_use,
    BackendNotFound: _not_found,
    OriginMismatch: _origin,
    Unauthorized: _unauthorized,
    Forbidden: _forbidden,
    UnsupportedMediaType: _media_type,
    BackendDenied: _denied,
    HTTPException: _http,
    RedisError: _unavailable,
    OSError: _unavailable,
    TimeoutError: _unavailable,
    Exception: _internal,
}


_DESCRIPTIONS = {
    400: "Invalid address, body or parameter; `field` names it",
    401: "A bearer token is required (admin.token is set)",
    403: "A foreign Host or Origin (another site; see admin.allowed_hosts)",
    415: "The body is not application/json",
    404: "No such backend (or pool)",
    409: "Conflict: the backend (or pool) exists, the backend belongs to discovery, or the pool is in use",
    422: "The route table fails its checks; `field` names the rule and its field (`routes[2].pool`)",
    503: "Redis is unreachable",
}


def problem_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem documents a route may answer."""
    return {
        code: ResponseSpec(
            data_container=Problem, description=_DESCRIPTIONS[code], media_type=PROBLEM_JSON, generate_examples=False
        )
        for code in codes
    }
