"""CORS for browser front-ends (`RELIGHT_CORS_ORIGINS`), on the public API only.

Starlette's CORSMiddleware does the protocol (preflights, `Vary`, origin matching); this module
only decides what it applies to and what it announces. The admin API, the operators' page and
`/metrics` get no CORS headers: they are not for other sites' pages, whatever the setting.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from relight.core.config import Settings

NOT_CROSS_ORIGIN = ("/admin", "/metrics")
ALLOWED_METHODS = ("GET", "POST", "PATCH", "DELETE")
# What a front-end sends: its key (either form), a JSON or multipart body, the v2 extras.
ALLOWED_HEADERS = (
    "x-api-key",
    "authorization",
    "content-type",
    "idempotency-key",
    "prefer",
    "cancel-after",
    "x-request-id",
    "last-event-id",
)
# What it may read from an answer besides the CORS-safelisted ones.
EXPOSED_HEADERS = (
    "X-Request-ID",
    "X-Correlation-ID",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
    "Location",
    "Idempotent-Replayed",
    "Preference-Applied",
    "x-seed-value",
    "x-remaining-credits",
    "Content-Disposition",
    "ETag",
)
PREFLIGHT_MAX_AGE_S = 600


class PublicCors:
    """CORSMiddleware in front of every route but those of NOT_CROSS_ORIGIN."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=settings.cors_origin_list,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            allow_credentials=settings.cors_allow_credentials,
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE_S,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(NOT_CROSS_ORIGIN):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
