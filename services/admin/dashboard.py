"""`GET /`: the live dashboard, a static page plus its script and stylesheet shipped in the package.

The page holds no data (it reads the API from the browser with the operator's token), so it and its
assets stay readable without a token even with ``admin.protect_reads`` (routes marked ``opt["public"]``).
Nothing is loaded from another host: the Content-Security-Policy allows only this origin. Assets are
referenced as ``static/NAME?v=HASH`` (relative, like the API calls, so a path prefix added by a reverse
proxy works), so they can be cached for a long time and still change with a new
release; the page itself is revalidated (ETag) on every load.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

PAGE = "dashboard.html"
ASSETS: dict[str, str] = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
ASSET_CACHE = "public, max-age=31536000, immutable"
PAGE_CACHE = "no-cache"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_COMMON = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str  # Litestar adds "; charset=utf-8" to text types
    etag: str  # quoted, as sent


def _read(name: str) -> bytes:
    return (resources.files("services.admin") / "static" / name).read_bytes()


def _asset(body: bytes, media_type: str) -> Asset:
    return Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


@cache
def assets() -> dict[str, Asset]:
    """The page (with asset URLs stamped with their hashes) and the assets, read once from the package."""
    out = {name: _asset(_read(name), media_type) for name, media_type in ASSETS.items()}
    page = _read(PAGE).decode()
    for name, asset in out.items():
        page = page.replace(f'"static/{name}"', f'"static/{name}?v={asset.etag.strip(chr(34))}"')
    out[PAGE] = _asset(page.encode(), "text/html")
    return out


def _serve(request: Request[Any, Any, Any], asset: Asset, cache_control: str) -> Response[bytes]:
    headers = {"ETag": asset.etag, "Cache-Control": cache_control, **_COMMON}
    if asset.etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(b"", status_code=304, headers=headers, media_type=asset.media_type)
    return Response(asset.body, headers=headers, media_type=asset.media_type)


@get("/", include_in_schema=False, opt={"public": True})
async def dashboard(request: Request[Any, Any, Any]) -> Response[bytes]:
    response = _serve(request, assets()[PAGE], PAGE_CACHE)
    response.headers["Content-Security-Policy"] = CSP
    return response


@get("/static/{name:str}", include_in_schema=False, opt={"public": True})
async def static_asset(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    if name not in ASSETS:
        raise NotFoundException(f"no static asset {name!r}")
    return _serve(request, assets()[name], ASSET_CACHE)


ROUTES = [dashboard, static_asset]
