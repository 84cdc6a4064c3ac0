"""Signed, expiring output URLs: HMAC-SHA256 over the path and the expiry time."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid


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
