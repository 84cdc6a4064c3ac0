"""The storage interface: flat keys like `outputs/<job>/0.webp`, whole-object reads and writes."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class StoredObjectMissing(LookupError):
    """The key names no stored object (never written, or deleted by retention)."""


class Storage(Protocol):
    async def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing what was there; atomic for readers."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes under `key`; raises StoredObjectMissing when there are none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""
        ...


@runtime_checkable
class PresigningStorage(Storage, Protocol):
    """A store that can hand out its own expiring URLs (an object store)."""

    def presigned_url(self, key: str, expires_s: int) -> str:
        """A URL that reads `key` without credentials for `expires_s` seconds."""
        ...
