"""ASGI middleware: rate-limit headers on every answer to an authenticated request; the
request id (logs, answer header); HTTP metrics."""

from __future__ import annotations

import uuid
from time import perf_counter

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relight.core import metrics
from relight.core.logs import request_context, valid_request_id
from relight.core.ratelimit import RateLimitDecision

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


REQUEST_ID_HEADER = "x-request-id"
# Where the request id goes when the route's own answer already uses `x-request-id` (Segmind's
# `/v1/ic-light` answers the job's id there, in its images and in its errors about the job).
CORRELATION_ID_HEADER = "x-correlation-id"
REQUEST_ID_STATE = "request_id"


class RequestId:
    """Gives every request a request id: the client's `X-Request-ID` when it is valid (printable
    ASCII, at most 128 characters), else a new one. Every log line written while the request
    is handled carries it, the answer returns it, and a submitted job keeps it, so the
    worker's and the webhook's lines about the job carry it too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                presented = value.decode("latin-1")
                break
        request_id = presented if valid_request_id(presented) else uuid.uuid4().hex
        scope.setdefault("state", {})[REQUEST_ID_STATE] = request_id

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER in headers:
                    headers[CORRELATION_ID_HEADER] = request_id
                else:
                    headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        with request_context(request_id):
            await self.app(scope, receive, send_with_request_id)


UNMATCHED_ROUTE = "<unmatched>"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Counts answers by method, route template (`/v2/requests/{request_id}`, never the raw
    path, so ids do not become series) and status, and times them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            metrics.count_http_answer(method, template, str(status), perf_counter() - started)
