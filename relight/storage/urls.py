"""Where a request's URLs live: absolute URLs of its resources, and the expiring links to its
images — signed here (HMAC-SHA256 over the job, the image's index and the expiry time, checked
by the api when the link is used), or presigned by the object store when storage is S3 (clients
then download from the store directly)."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass

from relight.config import Settings
from relight.storage import PresigningStorage, presigner_for


def _output_signature(secret_key: str, job_id: uuid.UUID, index: int, expires: int) -> str:
    message = f"output:{job_id}:{index}:{expires}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


# The subject image is signed as output -1: one scheme, and no index can collide with it.
INPUT_INDEX = -1


def sign_output(
    secret_key: str, job_id: uuid.UUID, index: int, ttl_s: int, now: float | None = None
) -> tuple[int, str]:
    """The `(expires, signature)` query values that grant access to one output until expiry."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    return expires, _output_signature(secret_key, job_id, index, expires)


def verify_output_signature(
    secret_key: str, job_id: uuid.UUID, index: int, expires: int, signature: str
) -> bool:
    if expires < time.time():
        return False
    expected = _output_signature(secret_key, job_id, index, expires)
    # As bytes: compare_digest refuses str with non-ASCII characters, which a URL may carry.
    return hmac.compare_digest(expected.encode(), signature.encode())


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

    def output_url(self, job_id: uuid.UUID, index: int, storage_key: str | None = None) -> str:
        """The output's expiring URL: the store's presigned one when it presigns."""
        if self.presigner is not None and storage_key is not None:
            return self.presigner.presigned_url(storage_key, self.output_url_ttl_s)
        expires, signature = sign_output(self.secret_key, job_id, index, self.output_url_ttl_s)
        return self._url(
            f"/v2/requests/{job_id}/outputs/{index}?expires={expires}&signature={signature}"
        )
