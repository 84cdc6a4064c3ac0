"""Every error leaves as `{"error": <human message>, "code": <machine code>, "request_id"}`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.responses import OrjsonResponse
from relight.errors import RelightError

logger = logging.getLogger(__name__)


def error_response(
    status_code: int,
    message: str,
    code: str,
    *,
    request_id: str | None = None,
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


def validation_error_response(errors: Sequence[Any]) -> OrjsonResponse:
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(400, "the request body is not valid JSON", "invalid_body")
    message, details = describe_validation_errors(errors)
    field = details[0]["field"] if details else None
    return error_response(
        422, message, "validation_error", extra={"field": field, "details": details}
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RelightError)
    async def _relight_error(request: Request, exc: RelightError) -> OrjsonResponse:
        if exc.status_code >= 500:
            logger.error("%s on %s: %s", exc.code, request.url.path, exc.message)
        extra = dict(exc.extra)
        if exc.status_code == 422 and "details" not in extra:
            # Every 422 has the same shape, whichever layer found the problem.
            field = extra.setdefault("field", None)
            extra["details"] = [{"field": field, "message": exc.message, "type": exc.code}]
        request_id = extra.pop("request_id", None)
        headers = extra.pop("headers", None)
        return error_response(
            exc.status_code,
            exc.message,
            exc.code,
            request_id=request_id,
            extra=extra,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        return validation_error_response(exc.errors())

    @app.exception_handler(ValidationError)
    async def _model_validation(request: Request, exc: ValidationError) -> OrjsonResponse:
        return validation_error_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
        return error_response(
            exc.status_code,
            str(exc.detail),
            codes.get(exc.status_code, "http_error"),
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(ConnectionError)
    async def _database_unavailable(request: Request, exc: Exception) -> OrjsonResponse:
        # Postgres is down or unreachable: nothing was committed, the client may retry.
        logger.warning("database unavailable on %s: %s", request.url.path, exc)
        return error_response(
            503,
            "the service is temporarily unavailable (database); retry shortly",
            "database_unavailable",
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> OrjsonResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "internal_error")
