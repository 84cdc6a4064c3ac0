"""Blob storage for inputs and outputs: a local folder or an S3-compatible bucket.

`open_storage(settings)` picks the backend from `RELIGHT_STORAGE_URL`: `file:///path` (or unset:
`RELIGHT_STORAGE_DIR`), or `s3://bucket/prefix` with `RELIGHT_S3_ENDPOINT_URL`,
`RELIGHT_S3_REGION` and the standard AWS credential variables. A store that can presign
(`PresigningStorage`) hands clients its own expiring URLs of outputs and inputs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import cast
from urllib.parse import unquote, urlsplit

from relight.core.config import Settings
from relight.core.storage.base import PresigningStorage, Storage, StoredObjectMissing
from relight.core.storage.filesystem import FileSystemStorage
from relight.core.storage.s3 import S3Storage

__all__ = [
    "FileSystemStorage",
    "PresigningStorage",
    "S3Storage",
    "Storage",
    "StoredObjectMissing",
    "open_storage",
    "presigner_for",
]


def open_storage(settings: Settings) -> Storage:
    """The storage `settings` configure (see the module docstring)."""
    return _open(
        settings.storage_url,
        settings.storage_dir,
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.public_output_base_url,
    )


def presigner_for(settings: Settings) -> PresigningStorage | None:
    """The configured store when it hands out its own URLs (S3), else None."""
    storage = open_storage(settings)
    if _presigns(type(storage)):
        return cast(PresigningStorage, storage)
    return None


@functools.lru_cache(maxsize=8)
def _presigns(storage_type: type[Storage]) -> bool:
    # Checking a runtime protocol walks its members every time (about 50 µs): every answer
    # with URLs asked it, once per request. The answer is the class's, so it is asked once.
    return issubclass(storage_type, PresigningStorage)


# One client per configuration and process (it holds a connection pool).
@functools.lru_cache(maxsize=8)
def _open(
    url: str | None,
    storage_dir: Path,
    endpoint_url: str | None,
    region: str,
    public_output_base_url: str | None,
) -> Storage:
    if not url:
        return FileSystemStorage(storage_dir)
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileSystemStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"RELIGHT_STORAGE_URL {url!r} names no bucket (s3://bucket/prefix)")
        return S3Storage(
            parts.netloc,
            parts.path.strip("/"),
            endpoint_url=endpoint_url,
            region=region,
            public_base_url=public_output_base_url,
        )
    raise ValueError(f"RELIGHT_STORAGE_URL {url!r}: the scheme must be file:// or s3://")
