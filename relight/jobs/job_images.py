"""A job's images in storage: its subject (and background) loaded for a run, its outputs stored
under deterministic keys (so a repeated run overwrites, never duplicates) and deleted again when
the attempt lost the job."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from time import perf_counter

import httpx

from relight.backends.render_backend import BackendResult, JobInput
from relight.core.config import Settings
from relight.core.errors import RelightError
from relight.core.fetch import fetch_image_bytes
from relight.core.image_structure import verify_field_structure
from relight.core.images import decode_image
from relight.core.models import Job, JobOutput
from relight.core.params import Backend
from relight.core.storage import Storage, StoredObjectMissing

logger = logging.getLogger(__name__)

EXTENSIONS = {"image/webp": "webp", "image/jpeg": "jpg", "image/png": "png"}


def elapsed_ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def _image_bytes(
    storage: Storage,
    http: httpx.AsyncClient,
    settings: Settings,
    *,
    key: str | None,
    url: str | None,
    what: str,
    field: str,
) -> bytes | None:
    """The bytes stored under `key`, else fetched (SSRF-safe, size-limited) from `url`."""
    if key is not None:
        try:
            return await storage.get(key)
        except StoredObjectMissing as exc:
            raise RelightError(
                f"the stored {what} image is gone", status_code=500, code="input_missing"
            ) from exc
    if url is None:
        return None
    return await fetch_image_bytes(
        http,
        url,
        policy=settings.egress_policy,
        max_bytes=settings.max_input_bytes,
        timeout_s=settings.fetch_timeout_s,
        field=field,
    )


async def load_input(
    job: Job,
    *,
    storage: Storage,
    http: httpx.AsyncClient,
    settings: Settings,
    timings: dict[str, float],
) -> JobInput:
    """The subject (bytes and decoded image) and, for an fbc request, the background's bytes
    (decoded on the GPU node, within the same limits)."""
    started = perf_counter()
    data = await _image_bytes(
        storage,
        http,
        settings,
        key=job.input_storage_key,
        url=job.input_url,
        what="subject",
        field="subject_image",
    )
    assert data is not None, "a job has a stored or a URL subject"
    fetched = perf_counter()
    timings["fetch_ms"] = elapsed_ms(fetched - started)
    # Decoded no larger than the output's crop needs (`resize_and_center_crop`).
    image = await asyncio.to_thread(
        decode_image,
        data,
        max_bytes=settings.max_input_bytes,
        max_pixels=settings.max_input_pixels,
        crop_width=int(job.params["width"]),
        crop_height=int(job.params["height"]),
    )
    timings["decode_ms"] = elapsed_ms(perf_counter() - fetched)
    background = await _image_bytes(
        storage,
        http,
        settings,
        key=job.background_storage_key,
        url=job.background_url,
        what="background",
        field="background_image",
    )
    if background is not None:
        # Its own checks and errors, before the job is sent anywhere: the node decodes it,
        # and would refuse it as a bad subject (an inline one was checked at submit).
        await asyncio.to_thread(
            verify_field_structure,
            "background_image",
            background,
            max_bytes=settings.max_input_bytes,
            max_pixels=settings.max_input_pixels,
        )
    return JobInput(
        job_id=job.id,
        data=data,
        url=job.input_url,
        image=image,
        backend_requested=Backend(job.backend_requested),
        background=background,
    )


async def store_outputs(
    storage: Storage, job: Job, result: BackendResult, timings: dict[str, float]
) -> list[JobOutput]:
    """Store the rendered images; their rows, not yet added to a session."""
    started = perf_counter()
    outputs = []
    for index, image in enumerate(result.images):
        extension = EXTENSIONS.get(image.content_type, "bin")
        key = f"outputs/{job.tenant_id}/{job.id}/{index}.{extension}"
        await storage.put(key, image.data)
        outputs.append(
            JobOutput(
                job_id=job.id,
                index=index,
                storage_key=key,
                content_type=image.content_type,
                width=image.width,
                height=image.height,
                bytes=len(image.data),
                sha256=hashlib.sha256(image.data).hexdigest(),
                seed=image.seed,
            )
        )
    timings["store_ms"] = elapsed_ms(perf_counter() - started)
    return outputs


async def delete_outputs(storage: Storage, outputs: list[JobOutput]) -> None:
    """Nothing is kept for a job this attempt no longer holds (canceled meanwhile)."""
    for output in outputs:
        try:
            await storage.delete(output.storage_key)
        except Exception:
            logger.warning("could not delete %s", output.storage_key, exc_info=True)
