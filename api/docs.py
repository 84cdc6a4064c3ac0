"""`/docs` (Swagger UI) and `/redoc`, with their scripts and styles served by this process.

FastAPI's own pages load them from public CDNs, so on a machine without internet access (or
behind a strict proxy) `/docs` is a blank page. The assets come from the `fastapi-offline`
package (MIT; it ships Swagger UI 5, Apache-2.0, which renders OpenAPI 3.1, and ReDoc, MIT):
a dependency from PyPI rather than 3 MB of vendored files here. Only its `static/` folder is
used; tests/api/test_docs_page.py renders `/docs` in a headless browser, so a package update
that moves the files fails there.

Nothing loads from another origin (tests/api/test_openapi_valid.py reads the pages and the
scripts and styles they load): ReDoc's bundle would fetch its sidebar's Redocly logo from
cdn.redoc.ly, so the bundle is served with that image made an empty inline SVG.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, Response

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs/assets"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_BUNDLE = "redoc.standalone.js"
# The "API docs by Redocly" link's logo, the one asset ReDoc fetches from elsewhere (no option
# turns it off): an empty SVG in its place shows nothing and fetches nothing.
REDOC_REMOTE_LOGO = '"https://cdn.redoc.ly/redoc/logo-mini.svg"'
EMPTY_SVG = '"data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22/%3E"'
SWAGGER_UI_PARAMETERS = {
    # The key given with "Authorize" survives a reload of the page.
    "persistAuthorization": True,
    "displayRequestDuration": True,
}


def install_docs(app: FastAPI) -> None:
    """Serve the documentation pages and their assets (create the app with docs_url=None and
    redoc_url=None, so FastAPI's CDN pages are not registered)."""

    # Before the mount, which would otherwise serve the bundle as it is.
    @app.get(f"{ASSETS_URL}/{REDOC_BUNDLE}", include_in_schema=False)
    async def redoc_bundle() -> Response:
        return Response(
            redoc_bundle_without_remote_assets(),
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} — API documentation",
            oauth2_redirect_url=f"{base}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{base}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} — API reference",
            redoc_js_url=f"{base}{ASSETS_URL}/{REDOC_BUNDLE}",
            redoc_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


@cache
def redoc_bundle_without_remote_assets() -> bytes:
    """ReDoc's bundle with its one remote image (the Redocly logo) made inline and empty."""
    bundle = (ASSETS / REDOC_BUNDLE).read_text("utf-8")
    return bundle.replace(REDOC_REMOTE_LOGO, EMPTY_SVG).encode()
