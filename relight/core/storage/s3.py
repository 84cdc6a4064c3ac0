"""Storage in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, a test server), via obstore.

obstore (Python bindings of the Rust `object_store` crate, which Arrow and Polars use) was
picked over aioboto3: it is natively async without a thread pool, signs requests and presigns
URLs itself (no hand-written SigV4 here), reads the standard AWS credential variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or an instance role), and is
one small wheel instead of botocore's tree. Objects are whole images (a few MB at most), put and
read in one request each; S3's PUT is atomic for readers.
"""

from __future__ import annotations

from datetime import timedelta

import obstore
from obstore.store import S3Store

from relight.core.storage.base import StoredObjectMissing


class S3Storage:
    """Keys under `prefix` in `bucket`; presigned GET URLs for clients (`presigned_url`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        public_base_url: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        options: dict[str, object] = {}
        if endpoint_url is not None:
            options["endpoint"] = endpoint_url
            # MinIO and test servers are addressed by path, and may speak plain HTTP.
            options["virtual_hosted_style_request"] = False
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            region=region,
            client_options={"allow_http": bool(endpoint_url and endpoint_url.startswith("http:"))},
            **options,  # type: ignore[arg-type]
        )

    async def put(self, key: str, data: bytes) -> None:
        await obstore.put_async(self._store, key, data)

    async def get(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError as exc:
            raise StoredObjectMissing(key) from exc

    async def delete(self, key: str) -> None:
        # S3's DELETE succeeds for a missing key too.
        await obstore.delete_async(self._store, key)

    def presigned_url(self, key: str, expires_s: int) -> str:
        """A URL that GETs the object for `expires_s` seconds without credentials, or the
        public (CDN) base's URL of it when one is configured."""
        if self.public_base_url is not None:
            full = f"{self.prefix}/{key}" if self.prefix else key
            return f"{self.public_base_url}/{full}"
        return obstore.sign(self._store, "GET", key, timedelta(seconds=expires_s))
