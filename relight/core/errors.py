"""One error type for every expected failure; the API renders it as `{"error", "code", ...}`."""

from __future__ import annotations

from typing import Any


class RelightError(Exception):
    """An expected condition with an HTTP status, a machine code and a human message."""

    status_code: int = 400
    code: str = "bad_request"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code
        self.extra: dict[str, Any] = extra or {}


class InvalidImage(RelightError):
    status_code = 400
    code = "invalid_image"


class ImageTooLarge(RelightError):
    status_code = 413
    code = "image_too_large"


class InvalidParameter(RelightError):
    status_code = 422
    code = "validation_error"


class Unauthorized(RelightError):
    status_code = 401
    code = "unauthorized"


class Forbidden(RelightError):
    status_code = 403
    code = "forbidden"


class RequestNotFound(RelightError):
    status_code = 404
    code = "not_found"


class Conflict(RelightError):
    status_code = 409
    code = "conflict"


class InsufficientCredits(RelightError):
    status_code = 406
    code = "insufficient_credits"


class InputFetchFailed(RelightError):
    """The subject image URL could not be fetched; `retryable` when the failure may pass."""

    status_code = 400
    code = "input_fetch_failed"

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class BackendFailed(RelightError):
    """A backend could not render. `retryable`: the same backend may succeed later (after
    `retry_after_s`, when the upstream said so); `failover`: another backend may be tried."""

    status_code = 502
    code = "backend_failed"

    def __init__(
        self,
        message: str,
        *,
        code: str = "backend_failed",
        retryable: bool,
        failover: bool | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.failover = retryable if failover is None else failover
        self.retry_after_s = retry_after_s
