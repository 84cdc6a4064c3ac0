"""Fetching a subject image from a URL: SSRF-checked, with a deadline and a byte cap."""

from __future__ import annotations

import asyncio
from urllib.parse import urljoin

import httpx

from relight.core.egress import EgressPolicy, EgressRefused, egress_stream
from relight.core.errors import ImageTooLarge, InputFetchFailed

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 3


async def fetch_image_bytes(
    client: httpx.AsyncClient,
    url: str,
    *,
    policy: EgressPolicy,
    max_bytes: int,
    timeout_s: float,
    field: str = "subject_image",
) -> bytes:
    """GET `url` and return the body; follows up to 3 redirects, checking every hop. Errors
    name `field`, the request field the URL came in."""
    try:
        # One deadline for the whole exchange, so a server that drips bytes cannot hold us.
        async with asyncio.timeout(timeout_s):
            for _ in range(MAX_REDIRECTS + 1):
                async with egress_stream(
                    client, "GET", url, policy, field=field, timeout_s=timeout_s
                ) as response:
                    location = response.headers.get("location")
                    if response.is_redirect and location:
                        url = urljoin(url, location)
                        continue
                    return await _read_body(response, max_bytes, field)
            raise InputFetchFailed(f"{field} URL redirects more than {MAX_REDIRECTS} times")
    except EgressRefused as exc:
        if exc.extra.get("retryable"):
            raise InputFetchFailed(exc.message, retryable=True) from exc
        raise
    except TimeoutError as exc:
        raise InputFetchFailed(
            f"{field} URL did not answer within {timeout_s:g} s", retryable=True
        ) from exc
    except httpx.TimeoutException as exc:
        raise InputFetchFailed(
            f"{field} URL did not answer within {timeout_s:g} s", retryable=True
        ) from exc
    except httpx.HTTPError as exc:
        raise InputFetchFailed(
            f"{field} URL could not be fetched: {exc.__class__.__name__}: {exc}",
            retryable=True,
        ) from exc


async def _read_body(response: httpx.Response, max_bytes: int, field: str) -> bytes:
    if response.status_code >= 400:
        raise InputFetchFailed(
            f"{field} URL answered HTTP {response.status_code}",
            retryable=response.status_code in RETRYABLE_STATUS,
        )
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ImageTooLarge(f"{field} URL serves {declared} bytes; the limit is {max_bytes}")
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > max_bytes:
            raise ImageTooLarge(f"{field} URL serves more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
