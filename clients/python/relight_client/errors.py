"""The client's exceptions: one per HTTP error class, each carrying what the server said."""

from __future__ import annotations

from typing import Any

import httpx


class RelightError(Exception):
    """The base of every error this package raises."""


class APIError(RelightError):
    """The server answered an error: `{"error", "code", "request_id"}` plus the HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None,
        request_id: str | None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code or 'error'}: {message}")
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.body = body or {}
        self.retry_after = retry_after


class BadRequestError(APIError):
    """400, 413, 415: the body or the image could not be read."""


class AuthenticationError(APIError):
    """401: missing, invalid or revoked key."""


class PermissionDeniedError(APIError):
    """403: suspended account, backend not allowed, admin API closed."""


class NotFoundError(APIError):
    """404: unknown request (another tenant's too) or tenant."""


class InsufficientCreditsError(APIError):
    """406: not enough credits (`body["required"]`, `body["available"]`)."""


class ConflictError(APIError):
    """409: not cancelable, idempotency key in flight."""


class UnprocessableEntityError(APIError):
    """422: a parameter out of range (`body["field"]` names it)."""


class RateLimitError(APIError):
    """429: rate limited or too many requests in flight (`retry_after` in seconds)."""


class ServerError(APIError):
    """5xx: internal error, backend failed, not ready, synchronous wait timed out."""


class ServiceUnavailableError(ServerError):
    """503: the service is not ready (retried automatically before it is raised)."""


class ConnectionFailedError(RelightError):
    """The server could not be reached, or dropped the connection (after any retries)."""

    def __init__(self, message: str, *, cause: httpx.TransportError) -> None:
        super().__init__(message)
        self.cause = cause


class WaitTimeoutError(RelightError):
    """`wait()` gave up: the request is still running and can be waited on again."""

    def __init__(self, request_id: str, timeout: float) -> None:
        super().__init__(f"request {request_id} did not finish within {timeout:g} s")
        self.request_id = request_id
        self.timeout = timeout


class RequestFailedError(RelightError):
    """The request ended FAILED or CANCELED where a finished image was needed."""

    def __init__(self, request_id: str, status: str, code: str | None, message: str | None):
        super().__init__(f"request {request_id} ended {status}: {message or code or 'no detail'}")
        self.request_id = request_id
        self.status = status
        self.code = code
        self.message = message


class WebhookVerificationError(RelightError):
    """No secret verifies the webhook's signature, or its timestamp is too old."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    406: InsufficientCreditsError,
    409: ConflictError,
    413: BadRequestError,
    415: BadRequestError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def retry_after_of(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (Relight sends whole seconds; HTTP dates are not used)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error answer, from its JSON body when it has one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    message = body.get("error")
    if not isinstance(message, str):
        message = response.text[:500] or response.reason_phrase
    code = body.get("code") if isinstance(body.get("code"), str) else None
    request_id = body.get("request_id") or response.headers.get("x-request-id")
    status = response.status_code
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return kind(
        message,
        status_code=status,
        code=code,
        request_id=str(request_id) if request_id is not None else None,
        body=body,
        retry_after=retry_after_of(response),
    )
