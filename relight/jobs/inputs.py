"""The `subject_image` (and `background_image`) fields: an http(s) URL, a data URL, or base64,
decoded to a source."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from relight.core.egress import EgressPolicy, check_url
from relight.core.errors import ImageTooLarge, InvalidImage, InvalidParameter

URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)


@dataclass(frozen=True)
class SubjectSource:
    """Either inline bytes (stored at submit) or a URL (fetched by the worker)."""

    data: bytes | None = None
    url: str | None = None

    @property
    def digest(self) -> str:
        """Identifies the input for idempotency: the bytes' hash, or the URL itself."""
        if self.data is not None:
            return "sha256:" + hashlib.sha256(self.data).hexdigest()
        return "url:" + (self.url or "")


def parse_subject_image(
    value: str, *, max_bytes: int, policy: EgressPolicy, field: str = "subject_image"
) -> SubjectSource:
    """Interpret the string form of an image field (a URL, a data URL or plain base64)."""
    text = value.strip()
    if not text:
        raise InvalidParameter(f"{field}: must not be empty", extra={"field": field})
    lowered = text[:8].lower()
    if URL_SCHEME.match(text):
        # Any scheme://, so ftp:// or file:// is a clear 422 rather than "bad base64".
        check_url(text, policy, field=field)
        return SubjectSource(url=text)
    payload = text
    if lowered.startswith("data:"):
        match = DATA_URL.match(text)
        if match is None:
            raise InvalidImage(f"{field}: a data URL must be base64-encoded (;base64,)")
        payload = text[match.end() :]
    # base64 grows data by 4/3; refuse before decoding what cannot fit the byte limit.
    if len(payload) > (max_bytes * 4) // 3 + 8:
        raise ImageTooLarge(
            f"{field} is larger than the limit of {max_bytes} bytes",
            extra={"limit_bytes": max_bytes},
        )
    compact = re.sub(r"\s+", "", payload).translate(URLSAFE_TO_STANDARD)
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(
            f"{field} is neither an http(s) URL nor valid base64 image data"
        ) from exc
    return SubjectSource(data=data)
