"""Fetching a subject image from a URL, with a timeout and a byte cap."""

from __future__ import annotations

import asyncio

import httpx

from relight.errors import ImageTooLarge, InputFetchFailed

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


async def fetch_image_bytes(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout_s: float
) -> bytes:
    """GET `url` and return the body; refuse bodies over `max_bytes` while streaming."""
    try:
        # One deadline for the whole exchange, so a server that drips bytes cannot hold us.
        async with asyncio.timeout(timeout_s):
            async with client.stream("GET", url, timeout=timeout_s) as response:
                if response.status_code >= 400:
                    raise InputFetchFailed(
                        f"subject_image URL answered HTTP {response.status_code}",
                        retryable=response.status_code in RETRYABLE_STATUS,
                    )
                if response.status_code >= 300:
                    raise InputFetchFailed(
                        f"subject_image URL answered HTTP {response.status_code} "
                        "(too many redirects)"
                    )
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise ImageTooLarge(
                        f"subject_image URL serves {declared} bytes; the limit is {max_bytes}"
                    )
                chunks: list[bytes] = []
                received = 0
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    if received > max_bytes:
                        raise ImageTooLarge(
                            f"subject_image URL serves more than the limit of {max_bytes} bytes"
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
    except TimeoutError as exc:
        raise InputFetchFailed(
            f"subject_image URL did not answer within {timeout_s:g} s", retryable=True
        ) from exc
    except httpx.TimeoutException as exc:
        raise InputFetchFailed(
            f"subject_image URL did not answer within {timeout_s:g} s", retryable=True
        ) from exc
    except httpx.HTTPError as exc:
        raise InputFetchFailed(
            f"subject_image URL could not be fetched: {exc.__class__.__name__}: {exc}",
            retryable=True,
        ) from exc
