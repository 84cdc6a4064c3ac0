"""Every error leaves as `{"error": <human message>, "code": <machine code>, "request_id"}`.

`request_id` is never null: the request (job) the error is about when there is one (a failed or
timed-out job; an unknown, finished or expired `/v2/requests/{request_id}`), otherwise the id of
this HTTP exchange, the `x-request-id` the answer carries (what the logs are searched by)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from api.responses import OrjsonResponse
from relight.core.errors import RelightError

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error answer. Some errors add fields (`limit`, `status_url`, ...)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="what went wrong, for people")
    code: str = Field(description="what went wrong, for programs (e.g. `not_found`)")
    request_id: str = Field(
        description="the request (job) the error is about when there is one, else this "
        "exchange's `x-request-id`"
    )


class ValidationErrorDetail(BaseModel):
    field: str | None
    message: str
    type: str | None


class ValidationErrorBody(ErrorBody):
    """A 422: the first bad field, and every problem found."""

    field: str | None = Field(default=None, description="the first field in error")
    details: list[ValidationErrorDetail]


# What each error status means on this API; routes document the ones they can answer with
# `responses=error_responses(...)`, so the spec lists every status a client may see.
ERROR_STATUSES: dict[int, str] = {
    400: "The body is malformed (not JSON, not a form) or the image is unreadable",
    401: "Missing or invalid credentials (API key, admin token or URL signature)",
    403: "Not allowed: account suspended, backend not allowed, or admin API disabled",
    404: "No such resource (or it belongs to another account)",
    406: "Insufficient credits (Segmind's status code)",
    409: "Conflicts with the resource's state (or an Idempotency-Key in flight)",
    410: "The stored image has passed its retention",
    413: "The body or image is over the size limit",
    415: "Unsupported content type: send application/json or multipart/form-data",
    422: "A parameter is invalid",
    429: "Rate limit, in-flight limit or failed admin sign-ins limit reached; retry after "
    "`Retry-After` seconds",
    500: "The request failed inside Relight (`internal_error`)",
    502: "The request failed in the backend that ran it",
    503: "A dependency (Postgres) is unavailable (`database_unavailable`) or every database "
    "connection is busy (`database_busy`); retry after `Retry-After` seconds",
    504: "The request did not finish in time; it keeps running (poll `status_url`)",
}
# Every route behind an API key: bad or expired key, a key without the route's scope, bad
# parameter, rate limit, database down.
AUTHENTICATED = (401, 403, 422, 429, 503)
# Every route of the admin API: bad token, API disabled, bad parameter, too many failed
# sign-ins from the address, database down.
ADMIN = (401, 403, 422, 429, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses, each with the error body."""
    return {
        status: {
            "model": ValidationErrorBody if status == 422 else ErrorBody,
            "description": ERROR_STATUSES[status],
        }
        for status in sorted(set(statuses))
    }


def error_response(
    status_code: int,
    message: str,
    code: str,
    *,
    request_id: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> OrjsonResponse:
    body: dict[str, Any] = {"error": message, "code": code, "request_id": request_id}
    body.update(extra or {})
    return OrjsonResponse(body, status_code=status_code, headers=headers)


def _field_name(location: Sequence[int | str]) -> str:
    parts = [str(part) for part in location if part not in ("body", "query", "header", "path")]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """A one-line message naming each bad field, and the details for programs."""
    details = []
    messages = []
    for error in errors:
        field = _field_name(error.get("loc", ()))
        message = str(error.get("msg", "is invalid"))
        if error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "extra_forbidden":
            message = "is not a known parameter"
        message = message.removeprefix("Value error, ")
        details.append({"field": field, "message": message, "type": error.get("type")})
        messages.append(f"{field}: {message}")
    return "; ".join(messages), details


def validation_error_response(errors: Sequence[Any], request_id: str) -> OrjsonResponse:
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(
            400, "the request body is not valid JSON", "invalid_body", request_id=request_id
        )
    message, details = describe_validation_errors(errors)
    field = details[0]["field"] if details else None
    return error_response(
        422,
        message,
        "validation_error",
        request_id=request_id,
        extra={"field": field, "details": details},
    )


def exchange_id(request: Request) -> str:
    """This HTTP exchange's id (`x-request-id`), which the RequestId middleware set."""
    found = request.scope.get("state", {}).get("request_id")
    return str(found) if found else uuid.uuid4().hex


# Errors about the request a `/{request_id}` path names: unknown (404), in a state that forbids
# the call (409), its image past retention (410).
_ABOUT_THE_NAMED_REQUEST = frozenset({404, 409, 410})


def _named_request(request: Request) -> str | None:
    try:
        return str(uuid.UUID(str(request.path_params["request_id"])))
    except (KeyError, ValueError):
        return None


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as `{"error", "code", "request_id"}`."""
    for exception, handler in _HANDLERS:
        app.exception_handler(exception)(handler)


async def _relight_error(request: Request, exc: RelightError) -> OrjsonResponse:
    if exc.status_code >= 500:
        logger.error("%s on %s: %s", exc.code, request.url.path, exc.message)
    extra = dict(exc.extra)
    if exc.status_code == 422 and "details" not in extra:
        # Every 422 has the same shape, whichever layer found the problem.
        field = extra.setdefault("field", None)
        extra["details"] = [{"field": field, "message": exc.message, "type": exc.code}]
    request_id = extra.pop("request_id", None)
    if request_id is None and exc.status_code in _ABOUT_THE_NAMED_REQUEST:
        request_id = _named_request(request)
    headers = extra.pop("headers", None)
    return error_response(
        exc.status_code,
        exc.message,
        exc.code,
        request_id=str(request_id) if request_id is not None else exchange_id(request),
        extra=extra,
        headers=headers,
    )


async def _request_validation(request: Request, exc: RequestValidationError) -> OrjsonResponse:
    return validation_error_response(exc.errors(), exchange_id(request))


async def _model_validation(request: Request, exc: ValidationError) -> OrjsonResponse:
    return validation_error_response(exc.errors(), exchange_id(request))


async def _http_error(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
    return error_response(
        exc.status_code,
        str(exc.detail),
        codes.get(exc.status_code, "http_error"),
        request_id=exchange_id(request),
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _client_gone(request: Request, exc: ClientDisconnect) -> OrjsonResponse:
    # The client hung up while sending its body: nothing was done, and nobody will read
    # this answer. Not an error of ours.
    logger.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response(
        400,
        "the client disconnected before sending its body",
        "aborted",
        request_id=exchange_id(request),
    )


async def _database_error(request: Request, exc: Exception) -> OrjsonResponse:
    # A connection Postgres dropped (a restart, a failover) is unavailability, whatever
    # class the driver gave it; anything else from the database is a bug (500).
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return await _database_unavailable(request, exc)
    return await _unexpected(request, exc)


# Seconds a client waits before retrying a request the database could not serve.
DATABASE_RETRY_AFTER_S = "2"


async def _database_unavailable(request: Request, exc: Exception) -> OrjsonResponse:
    # Postgres is down or unreachable: nothing was committed, the client may retry.
    logger.warning("database unavailable on %s: %s", request.url.path, exc)
    return error_response(
        503,
        "the service is temporarily unavailable (database); retry shortly",
        "database_unavailable",
        request_id=exchange_id(request),
        headers={"Retry-After": DATABASE_RETRY_AFTER_S},
    )


async def _database_busy(request: Request, exc: PoolTimeout) -> OrjsonResponse:
    # Every connection of this process's pool stayed in use for RELIGHT_DATABASE_POOL_TIMEOUT_S
    # (overload, not an outage): the request got no connection, so it wrote nothing through
    # one; the client may retry.
    logger.warning("database busy on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        f"{_busy_connections(request)}; retry shortly",
        "database_busy",
        request_id=exchange_id(request),
        headers={"Retry-After": DATABASE_RETRY_AFTER_S},
    )


def _busy_connections(request: Request) -> str:
    """What is busy: this api process's pool of database connections (a fixed one), by size."""
    pool = request.app.state.relight.engine.pool
    if isinstance(pool, QueuePool):
        return f"all database connections are busy ({pool.size()} in this api process)"
    return "all database connections are busy"


async def _unexpected(request: Request, exc: Exception) -> OrjsonResponse:
    # Starlette answers unhandled errors outside every middleware: carry the request id
    # into this line and this answer by hand.
    request_id = exchange_id(request)
    logger.exception(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        extra={"request_id": request_id},
    )
    return error_response(
        500,
        "internal server error",
        "internal_error",
        request_id=request_id,
        headers={"x-request-id": request_id},
    )


_Handler = Callable[[Request, Any], Awaitable[OrjsonResponse]]
# Starlette picks the handler of the nearest class in the exception's MRO.
_HANDLERS: tuple[tuple[type[Exception], _Handler], ...] = (
    (RelightError, _relight_error),
    (RequestValidationError, _request_validation),
    (ValidationError, _model_validation),
    (StarletteHTTPException, _http_error),
    (ClientDisconnect, _client_gone),
    (DBAPIError, _database_error),
    (PoolTimeout, _database_busy),
    (OperationalError, _database_unavailable),
    (InterfaceError, _database_unavailable),
    (ConnectionError, _database_unavailable),
    (Exception, _unexpected),
)
