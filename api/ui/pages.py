"""How the operators' page answers: templates, security headers, redirects and refusals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.ui.session import OperatorSession
from relight.ops.requests import status_word

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
# Statuses as the API words them (COMPLETED, not succeeded), on every page.
templates.env.filters["status_word"] = status_word
templates.env.filters["epoch_time"] = lambda epoch: datetime.fromtimestamp(epoch, UTC).strftime(
    "%Y-%m-%d %H:%M:%S"
)
PREFIX = "/admin/ui"
PAGE_OFF = "The operators' page is off: set RELIGHT_ADMIN_TOKEN to turn it on."
# Which tab of the navigation each page belongs to.
SECTIONS = {"request.html": "requests", "tenant.html": "tenants"}


class LoginRequired(Exception):
    """No valid session: the browser goes to the sign-in form."""


class PageRefused(Exception):
    """The page is off (no admin token) or a form's CSRF token is wrong: 403; or a parameter
    holds text that cannot be stored: 400 naming it."""

    def __init__(self, message: str, status_code: int = 403) -> None:
        self.message = message
        self.status_code = status_code


def _security_headers(response: Response, request: Request) -> Response:
    state = request.app.state.relight
    settings = state.settings
    # Thumbnails come from the object store when it presigns (S3) or has a public base.
    from_store = (settings.storage_url or "").startswith("s3") or settings.public_output_base_url
    images = "'self' https: http:" if from_store else "'self'"
    # Every asset comes from this server; the browser enforces it.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; img-src {images}; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


# What every other answer under the page's prefix (redirects, its assets, errors) says: it
# is no page to run anything in.
STRICT_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


class PageHeaders:
    """`X-Content-Type-Options: nosniff` on every answer under the page's prefix (a browser
    must not read its assets, or an error, as another type), and a Content-Security-Policy
    on each one that has none of its own (pages set theirs in `render`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = STRICT_POLICY
            await send(message)

        await self.app(scope, receive, send_with_headers)


def render(
    request: Request,
    name: str,
    operator: OperatorSession | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        name,
        {
            "operator": operator,
            "prefix": PREFIX,
            "active": SECTIONS.get(name, name.removesuffix(".html")),
            **context,
        },
        status_code=status_code,
    )
    return _security_headers(response, request)  # type: ignore[return-value]


def see_other(path: str) -> RedirectResponse:
    return RedirectResponse(PREFIX + path, status_code=303)


def under_page(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


# Headers of an error answer that still mean something on its page.
_KEPT_HEADERS = ("retry-after", "x-request-id", "allow")
_Handler = Callable[[Request, Any], Awaitable[Response]]


def _as_page(api_handler: _Handler) -> _Handler:
    """The API's handler of an error, answering a page under the prefix: the same status (but
    400 for a malformed path or query parameter, which the API calls 422) and message, as an
    HTML page with a way back, never JSON. Everywhere else the API's JSON, unchanged."""

    async def handler(request: Request, exc: Exception) -> Response:
        answer = await api_handler(request, exc)
        if not under_page(request.url.path):
            return answer
        try:
            body = orjson.loads(bytes(answer.body))
        except orjson.JSONDecodeError:
            body = {}
        status = 400 if isinstance(exc, RequestValidationError) else answer.status_code
        message = body.get("error") or "something went wrong"
        if isinstance(exc, StarletteHTTPException) and status == 404:
            message = f"There is no page at {request.url.path}."
        page = render(
            request,
            "error.html",
            None,
            status,
            code=status,
            message=message,
            reference=body.get("request_id"),
        )
        for name in _KEPT_HEADERS:
            if name in answer.headers:
                page.headers[name] = answer.headers[name]
        return page

    return handler


def install_page_handlers(app: FastAPI) -> None:
    """The page's own answers (the redirect to sign in, the refusal), and every error the API
    renders as JSON (bad parameter, unknown route, a crash) as an HTML page under the prefix.
    Runs after the API's handlers are installed, to wrap them."""
    for exception, api_handler in list(app.exception_handlers.items()):
        app.add_exception_handler(exception, _as_page(cast(_Handler, api_handler)))

    async def _login_required(request: Request, exc: Exception) -> Response:
        return see_other("/login")

    async def _refused(request: Request, exc: Exception) -> Response:
        if isinstance(exc, PageRefused):
            return render(
                request,
                "error.html",
                None,
                exc.status_code,
                code=exc.status_code,
                message=exc.message,
            )
        return render(request, "error.html", None, 403, code=403, message="refused")

    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageRefused, _refused)
    app.add_middleware(PageHeaders)
