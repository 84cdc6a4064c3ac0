"""Where a request's URLs live: absolute URLs of its resources, and the expiring links to its
images and its status stream — signed here (HMAC-SHA256 with `RELIGHT_SECRET_KEY` over what the
link opens and its expiry time, checked by the api when the link is used), or, for images,
presigned by the object store when storage is S3 (clients then download from the store
directly). A signed link opens its one resource of its one request without an API key, so a
browser's `<img>` or `EventSource`, which cannot send headers, can use it."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

from relight.core.config import Settings
from relight.core.storage import PresigningStorage, presigner_for


def _signature(secret_key: str, scope: str, expires: int) -> str:
    # `scope` names what the link opens (`output:{job}:{index}`, `stream:{job}`), so a
    # signature made for one resource opens no other.
    message = f"{scope}:{expires}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def output_scope(job_id: uuid.UUID, index: int) -> str:
    return f"output:{job_id}:{index}"


def stream_scope(job_id: uuid.UUID) -> str:
    return f"stream:{job_id}"


# The subject image is signed as output -1: one scheme, and no index can collide with it.
INPUT_INDEX = -1


class SignatureCheck(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"


def sign(secret_key: str, scope: str, ttl_s: int, now: float | None = None) -> tuple[int, str]:
    """The `(expires, signature)` query values that open `scope` until expiry."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    return expires, _signature(secret_key, scope, expires)


def check_signature(secret_key: str, scope: str, expires: int, signature: str) -> SignatureCheck:
    """Whether a link's `expires` and `signature` open `scope` now (a wrong signature is
    INVALID whether or not its time has passed)."""
    expected = _signature(secret_key, scope, expires)
    # As bytes: compare_digest refuses str with non-ASCII characters, which a URL may carry.
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return SignatureCheck.INVALID
    return SignatureCheck.EXPIRED if expires < time.time() else SignatureCheck.VALID


def sign_output(
    secret_key: str, job_id: uuid.UUID, index: int, ttl_s: int, now: float | None = None
) -> tuple[int, str]:
    """The `(expires, signature)` query values that grant access to one output until expiry."""
    return sign(secret_key, output_scope(job_id, index), ttl_s, now)


def verify_output_signature(
    secret_key: str, job_id: uuid.UUID, index: int, expires: int, signature: str
) -> bool:
    scope = output_scope(job_id, index)
    return check_signature(secret_key, scope, expires, signature) is SignatureCheck.VALID


# Webhook bodies and the input URL handed to Segmind need an absolute base even when no client
# request names the host; set RELIGHT_PUBLIC_BASE_URL in production.
DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class UrlBuilder:
    """Absolute URLs of a request's resources; outputs signed by the api, or presigned by the
    object store when storage is S3 (clients then download from the store directly)."""

    base_url: str
    secret_key: str
    output_url_ttl_s: int
    presigner: PresigningStorage | None = None

    @classmethod
    def background(cls, settings: Settings) -> UrlBuilder:
        """The URLs of what no client request is there for: webhook bodies, Segmind's input."""
        return cls(
            base_url=settings.public_base_url or DEFAULT_PUBLIC_BASE_URL,
            secret_key=settings.secret_key,
            output_url_ttl_s=settings.output_url_ttl_s,
            presigner=presigner_for(settings),
        )

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def status_url(self, job_id: uuid.UUID) -> str:
        return self._url(f"/v2/requests/{job_id}/status")

    def response_url(self, job_id: uuid.UUID) -> str:
        return self._url(f"/v2/requests/{job_id}")

    def cancel_url(self, job_id: uuid.UUID) -> str:
        return self._url(f"/v2/requests/{job_id}/cancel")

    def batch_url(self, batch_id: uuid.UUID) -> str:
        return self._url(f"/v2/batches/{batch_id}")

    def batch_cancel_url(self, batch_id: uuid.UUID) -> str:
        return self._url(f"/v2/batches/{batch_id}/cancel")

    def input_url(self, job_id: uuid.UUID) -> str:
        """A signed, expiring URL of the stored subject image (for Segmind to fetch)."""
        expires, signature = sign_output(
            self.secret_key, job_id, INPUT_INDEX, self.output_url_ttl_s
        )
        return self._url(f"/v2/requests/{job_id}/input?expires={expires}&signature={signature}")

    def stream_url(self, job_id: uuid.UUID) -> str:
        """A signed, expiring URL of the request's status stream: it opens without an API key
        (`new EventSource(stream_url)` in a browser)."""
        expires, signature = sign(self.secret_key, stream_scope(job_id), self.output_url_ttl_s)
        return self._url(
            f"/v2/requests/{job_id}/status/stream?expires={expires}&signature={signature}"
        )

    def output_url(self, job_id: uuid.UUID, index: int, storage_key: str | None = None) -> str:
        """The output's expiring URL: the store's presigned one when it presigns."""
        if self.presigner is not None and storage_key is not None:
            return self.presigner.presigned_url(storage_key, self.output_url_ttl_s)
        expires, signature = sign_output(self.secret_key, job_id, index, self.output_url_ttl_s)
        return self._url(
            f"/v2/requests/{job_id}/outputs/{index}?expires={expires}&signature={signature}"
        )
