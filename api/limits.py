"""Limits that hold before a route runs: the size of the request head, who may send an admin
body, and how large a body each route takes, read as it arrives.

FastAPI reads (and parses) a declared body before it runs a route's dependencies, its
authentication included; so the admin token is checked here, from the headers, before any body
is read, and a body is cut off at its route's cap as it streams in, whatever the route does
with it. Only the relight submits take images inline; every other route takes a small body.
"""

from __future__ import annotations

import hmac

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.body import body_limit
from api.middleware import REQUEST_ID_STATE
from api.signin_throttle import SigninThrottle, client_address
from relight.core.config import Settings
from relight.core.errors import Forbidden, RelightError, Unauthorized

ADMIN_PREFIX = "/admin/v1"
# The routes that take an inline image (JSON base64 or a multipart file).
IMAGE_ROUTES = frozenset({"/v1/ic-light", "/v2/ic-light", "/v2/batches"})


def check_admin_token(settings: Settings, token: str) -> None:
    """403 while the admin API is off, 401 unless `token` is the admin token (constant time)."""
    if not settings.admin_token:
        raise Forbidden(
            "the admin API is disabled: set RELIGHT_ADMIN_TOKEN to enable it",
            code="admin_disabled",
        )
    if not token or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        raise Unauthorized("missing or invalid admin token", code="invalid_admin_token")


async def check_admin_token_throttled(
    settings: Settings, throttle: SigninThrottle, address: str, token: str
) -> None:
    """`check_admin_token`, behind the sign-in throttle of `address`: 429
    `too_many_failed_signins` once it failed too often this minute (even with the right token),
    and each wrong token counted. A request that presents no token is a 401 but no guess: it
    is neither counted nor throttled (a probe or a misconfigured script must not lock the
    operators' address out)."""
    if settings.admin_token and token:
        refusal = await throttle.refusal(address, "admin API")
        if refusal is not None:
            raise refusal.error()
    try:
        check_admin_token(settings, token)
    except Unauthorized:
        if not token:
            raise
        refusal = await throttle.record_failure(address, "admin API")
        if refusal is not None:
            raise refusal.error() from None
        raise


def bearer_token(authorization: str | None) -> str:
    """The credentials of an `Authorization: Bearer …` header, else ''."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def body_cap(settings: Settings, path: str) -> int:
    """The largest body the route at `path` takes."""
    return body_limit(settings) if path in IMAGE_ROUTES else settings.max_json_body_bytes


async def _answer(scope: Scope, send: Send, error: RelightError) -> None:
    # Every error body names a request id: here, before any route, the exchange's own.
    request_id = scope.get("state", {}).get(REQUEST_ID_STATE)
    extra = dict(error.extra)
    headers: dict[str, str] = extra.pop("headers", {})
    body = orjson.dumps(
        {"error": error.message, "code": error.code, "request_id": request_id, **extra}
    )
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is not read: the connection cannot carry another request.
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def head_size(scope: Scope) -> int:
    """Bytes of the request line's target and the headers, as they came."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class RequestLimits:
    """431 for a head over RELIGHT_MAX_HEADER_BYTES; for a request with a body: the admin token
    checked first on admin routes, then 413 for a body over its route's cap, declared or as
    it streams (the app is told the client left and reads no more)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings
        if head_size(scope) > settings.max_header_bytes:
            limit = settings.max_header_bytes
            await _answer(
                scope,
                send,
                RelightError(
                    f"the request's headers are larger than the limit of {limit} bytes",
                    status_code=431,
                    code="headers_too_large",
                    extra={"limit_bytes": limit},
                ),
            )
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared in (None, b"0") and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            try:
                await check_admin_token_throttled(
                    settings,
                    scope["app"].state.relight.signin_throttle,
                    client_address(scope.get("client")),
                    bearer_token(authorization),
                )
            except RelightError as exc:
                await _answer(scope, send, exc)
                return
        cap = body_cap(settings, path)
        too_large = RelightError(
            f"the request body is larger than the limit of {cap} bytes for {path}",
            status_code=413,
            # The submits' own code for a body over their limit (an image's worth).
            code="image_too_large" if path in IMAGE_ROUTES else "body_too_large",
            extra={"limit_bytes": cap},
        )
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await _answer(scope, send, too_large)
            return
        await self._capped(scope, receive, send, cap, too_large)

    async def _capped(
        self, scope: Scope, receive: Receive, send: Send, cap: int, too_large: RelightError
    ) -> None:
        received = 0
        answered = started = False

        async def capped_receive() -> Message:
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    # The app stops reading at a disconnect; what it answers then is dropped.
                    answered = True
                    if not started:
                        await _answer(scope, send, too_large)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_answered(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            if not answered:
                await send(message)

        await self.app(scope, capped_receive, send_unless_answered)
