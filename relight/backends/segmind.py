"""The `segmind` backend: Segmind's hosted ic-light API (`POST {base}/v1/ic-light`).

One call answers one image (raw bytes), so `number_of_images: N` makes N calls with seeds
seed, seed+1, …, a few at a time. Upstream answers map to errors the runner acts on:
401/403 `upstream_auth` and 406 `upstream_credits` (this backend is done; another may be
tried), 400/422 `upstream_rejected` (the request itself is wrong: fail and refund), 429
`upstream_rate_limited` (retry after its Retry-After), 5xx, timeouts, connection errors and
undecodable answers (retry with backoff, then fail over or fail).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from relight.backends.attempts import BackendCall
from relight.backends.render_backend import (
    BackendResult,
    JobInput,
    ProgressCallback,
    RenderedImage,
    refuse_backgrounds,
)
from relight.core.backoff import parse_retry_after
from relight.core.config import Settings
from relight.core.errors import BackendFailed
from relight.core.params import Backend, RelightParams
from relight.core.storage.urls import UrlBuilder

logger = logging.getLogger(__name__)

ERROR_EXCERPT = 300


def segmind_body(params: RelightParams, subject_image: str, seed: int) -> dict[str, Any]:
    """The request body in Segmind's own parameter names, one image per call."""
    return {
        "prompt": params.prompt,
        "subject_image": subject_image,
        "appended_prompt": params.appended_prompt,
        "negative_prompt": params.negative_prompt,
        "cfg": params.cfg,
        "width": params.width,
        "height": params.height,
        "steps": params.steps,
        "seed": seed,
        "highres_scale": params.highres_scale,
        "highres_denoise": params.highres_denoise,
        "lowres_denoise": params.lowres_denoise,
        "light_source": params.light_source.value,
        "number_of_images": 1,
        "output_format": params.output_format.value,
        "output_quality": params.output_quality,
    }


class SegmindBackend:
    name = Backend.SEGMIND

    def __init__(self, client: httpx.AsyncClient, settings: Settings, urls: UrlBuilder) -> None:
        assert settings.segmind_api_key, "the segmind backend needs RELIGHT_SEGMIND_API_KEY"
        self.client = client
        self.settings = settings
        self.urls = urls
        self.endpoint = settings.segmind_base_url.rstrip("/") + "/v1/ic-light"
        self.api_key = settings.segmind_api_key
        self.remaining_credits: float | None = None

    def subject_for(self, job_input: JobInput) -> str:
        if self.settings.segmind_subject == "auto":
            if job_input.url is not None:
                return job_input.url
            if self.settings.public_base_url:
                return self.urls.input_url(job_input.job_id)
        return base64.b64encode(job_input.data).decode()

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        refuse_backgrounds(self.name, params)
        subject = self.subject_for(job_input)
        limit = asyncio.Semaphore(self.settings.segmind_concurrency)
        done = 0

        async def one(index: int) -> RenderedImage:
            nonlocal done
            async with limit:
                image = await self._call(segmind_body(params, subject, seed + index), calls)
            done += 1
            if progress is not None:
                progress(done / params.number_of_images)
            return image

        started = perf_counter()
        try:
            # A TaskGroup cancels the sibling calls as soon as one fails.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(i)) for i in range(params.number_of_images)]
        except BaseExceptionGroup as group_error:
            raise _most_telling(group_error) from group_error
        return BackendResult(
            images=[task.result() for task in tasks],
            timings={"upstream_ms": round((perf_counter() - started) * 1000, 2)},
        )

    async def _call(self, body: dict[str, Any], calls: list[BackendCall]) -> RenderedImage:
        started_at = datetime.now(UTC).isoformat()
        started = perf_counter()

        def record(outcome: str, status: int | None = None, error: str | None = None) -> None:
            calls.append(
                BackendCall(
                    backend=self.name,
                    started_at=started_at,
                    latency_ms=round((perf_counter() - started) * 1000, 2),
                    outcome=outcome,
                    status_code=status,
                    error=error,
                    remaining_credits=self.remaining_credits,
                )
            )

        try:
            response = await self.client.post(
                self.endpoint,
                json=body,
                headers={"x-api-key": self.api_key},
                timeout=self.settings.segmind_timeout_s,
            )
        except httpx.TimeoutException as exc:
            record("timeout", error=f"no answer within {self.settings.segmind_timeout_s:g} s")
            raise BackendFailed(
                "Segmind did not answer in time", code="upstream_timeout", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            record("unreachable", error=f"{exc.__class__.__name__}: {exc}")
            raise BackendFailed(
                f"Segmind could not be reached: {exc.__class__.__name__}",
                code="upstream_unreachable",
                retryable=True,
            ) from exc
        remaining = _credits(response.headers.get("x-remaining-credits"))
        if remaining is not None:
            self.remaining_credits = remaining
        status = response.status_code
        if status == 200:
            try:
                image = self._decode(response, seed=int(body["seed"]))
            except BackendFailed as exc:
                record("invalid_response", status, exc.message)
                raise
            record("ok", status)
            return image
        detail = _error_text(response)
        record("error", status, detail)
        raise _map_error(status, detail, parse_retry_after(response.headers.get("retry-after")))

    def _decode(self, response: httpx.Response, *, seed: int) -> RenderedImage:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            raise BackendFailed(
                f"Segmind answered {content_type or 'no content type'} instead of an image",
                code="upstream_invalid_response",
                retryable=True,
            )
        try:
            with Image.open(io.BytesIO(response.content)) as image:
                image.verify()
                width, height = image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BackendFailed(
                "Segmind's image could not be decoded",
                code="upstream_invalid_response",
                retryable=True,
            ) from exc
        return RenderedImage(
            data=response.content,
            content_type="image/jpeg" if content_type == "image/jpg" else content_type,
            width=width,
            height=height,
            seed=seed,
        )


def _credits(header: str | None) -> float | None:
    """Segmind's `x-remaining-credits` (it bills in fractions); None when absent or odd."""
    try:
        value = float(header) if header else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _most_telling(group_error: BaseExceptionGroup[BaseException]) -> BaseException:
    """Of the calls that failed together, the failure that decides what happens next: a
    permanent one (no retry) over a transient one; anything else as it came."""
    failures = [error for error in group_error.exceptions if isinstance(error, BackendFailed)]
    permanent = [error for error in failures if not error.retryable]
    if permanent:
        return permanent[0]
    if failures:
        return failures[0]
    return group_error.exceptions[0]


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:ERROR_EXCERPT]
    if isinstance(payload, dict):
        message = payload.get("error") or payload.get("message") or payload.get("detail")
        if message:
            return str(message)[:ERROR_EXCERPT]
    return response.text[:ERROR_EXCERPT]


def _map_error(status: int, detail: str, retry_after_s: float | None) -> BackendFailed:
    if status in (401, 403):
        logger.error(
            "Segmind refused our API key (HTTP %d): %s: check RELIGHT_SEGMIND_API_KEY",
            status,
            detail,
        )
        return BackendFailed(
            f"Segmind refused the platform's credentials (HTTP {status})",
            code="upstream_auth",
            retryable=False,
            failover=True,
        )
    if status == 406:
        logger.error("Segmind account is out of credits: %s", detail)
        return BackendFailed(
            "Segmind's account is out of credits",
            code="upstream_credits",
            retryable=False,
            failover=True,
        )
    if status in (400, 422):
        return BackendFailed(
            f"Segmind rejected the request (HTTP {status}): {detail}",
            code="upstream_rejected",
            retryable=False,
            failover=False,
        )
    if status == 429:
        return BackendFailed(
            "Segmind is rate limiting us",
            code="upstream_rate_limited",
            retryable=True,
            retry_after_s=retry_after_s,
        )
    return BackendFailed(
        f"Segmind failed (HTTP {status}): {detail}",
        code="upstream_error",
        retryable=status >= 500 or status == 408,
        retry_after_s=retry_after_s,
    )
