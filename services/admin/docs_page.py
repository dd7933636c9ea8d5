"""A browsable OpenAPI page rendered on the server: no JavaScript, no assets from a CDN.

Litestar's Swagger/Redoc/Scalar/Elements pages load their bundles from public CDNs, which an air-gapped
operator cannot reach; this page lists every operation with its parameters, bodies and responses, and
links to the raw schema. Swagger UI is offered too when ``admin.swagger_ui_url`` names a local copy.
"""

from __future__ import annotations

import html
import json
from typing import Any

import msgspec
from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin, SwaggerRenderPlugin

_STYLE = """<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 2rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2rem} code,pre{font:13px ui-monospace,monospace}
pre{background:#f6f6f6;padding:.6rem;overflow:auto;max-height:24rem}
details{border:1px solid #ddd;border-radius:4px;margin:.4rem 0;padding:.3rem .6rem}
summary{cursor:pointer} .m{display:inline-block;width:4.5rem;font-weight:bold}
.GET{color:#0a6}.POST{color:#06c}.PUT{color:#a60}.PATCH{color:#a0a}.DELETE{color:#c00}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
</style>"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _json(value: Any) -> str:
    return _e(json.dumps(value, indent=2, sort_keys=False))


def render_page(schema: dict[str, Any], json_url: str) -> str:
    info = schema.get("info", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_e(info.get('title', 'API'))}</title>{_STYLE}</head><body>",
        f"<h1>{_e(info.get('title', 'API'))} <small>{_e(info.get('version', ''))}</small></h1>",
        f"<p>{_e(info.get('description', ''))}</p>",
        f"<p>OpenAPI {_e(schema.get('openapi', ''))}: <a href='{_e(json_url)}'>JSON</a></p>",
        "<h2>Operations</h2>",
    ]
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or method.startswith("x-") or method == "parameters":
                continue
            verb = method.upper()
            parts.append(
                f"<details><summary><span class='m {verb}'>{verb}</span><code>{_e(path)}</code> "
                f"&mdash; {_e(op.get('summary', ''))}</summary>"
            )
            if op.get("description"):
                parts.append(f"<p>{_e(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>")
                for p in params:
                    parts.append(
                        f"<tr><td><code>{_e(p.get('name'))}</code></td><td>{_e(p.get('in'))}</td>"
                        f"<td>{_e(p.get('required', False))}</td><td><code>{_e(json.dumps(p.get('schema', {})))}</code>"
                        "</td></tr>"
                    )
                parts.append("</table>")
            body = op.get("requestBody")
            if body:
                parts.append(f"<p>Request body</p><pre>{_json(body.get('content', {}))}</pre>")
            parts.append("<p>Responses</p><ul>")
            for code, resp in op.get("responses", {}).items():
                types = ", ".join(resp.get("content", {}).keys())
                parts.append(f"<li><b>{_e(code)}</b> {_e(resp.get('description', ''))} <code>{_e(types)}</code></li>")
            parts.append("</ul></details>")
    schemas = schema.get("components", {}).get("schemas", {})
    if schemas:
        parts.append("<h2>Schemas</h2>")
        for name, body in schemas.items():
            parts.append(f"<details><summary><code>{_e(name)}</code></summary><pre>{_json(body)}</pre></details>")
    parts.append("</body></html>")
    return "".join(parts)


class BrowsePlugin(OpenAPIRenderPlugin):
    """Serves :func:`render_page` at ``/schema`` (and ``/schema/browse``)."""

    def __init__(self) -> None:
        super().__init__(path=["/", "/browse"], favicon="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        plain = msgspec.to_builtins(openapi_schema, enc_hook=str)
        return render_page(plain, self.get_openapi_json_route(request)).encode()


def render_plugins(swagger_ui_url: str) -> list[OpenAPIRenderPlugin]:
    plugins: list[OpenAPIRenderPlugin] = [BrowsePlugin()]
    if swagger_ui_url:
        base = swagger_ui_url.rstrip("/")
        plugins.append(
            SwaggerRenderPlugin(
                js_url=f"{base}/swagger-ui-bundle.js",
                css_url=f"{base}/swagger-ui.css",
                standalone_preset_js_url=f"{base}/swagger-ui-standalone-preset.js",
                favicon="",
            )
        )
    return plugins
