"""ASGI middleware: rate-limit headers on every answer to an authenticated request."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relight.ratelimit import RateLimitDecision

RATE_LIMIT_STATE = "rate_limit"


class RateLimitHeaders:
    """Adds the headers of the request's rate-limit decision, whatever the route answered
    (including errors), since the decision is made in a dependency before the route runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One dict shared with the request's `state`, so the decision is visible here.
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision: RateLimitDecision | None = state.get(RATE_LIMIT_STATE)
                if decision is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in decision.headers().items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
