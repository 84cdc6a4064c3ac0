"""The `local` backend: a CPU engine inside the worker process, on a thread pool.

The engine (inference's classic one) is handed in by the worker's wiring: `relight` never
imports `inference`, so it asks only for what `RelightEngine` below describes.

Its progress is the engine's stages, then the encoding of each image, so `progress` moves
through the whole render instead of jumping to the end. Encoding took from a sixth (one 3072²
webp) to under half (one default 768×960 webp) of the time here: `RENDER_SHARE` is a middle.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from time import perf_counter
from typing import Protocol

from PIL import Image

from relight.backends.attempts import BackendCall
from relight.backends.render_backend import (
    BackendResult,
    JobInput,
    ProgressCallback,
    RenderedImage,
    refuse_backgrounds,
)
from relight.core.images import encode_image
from relight.core.params import Backend, RelightParams

# The share of the work that the engine's stages stand for; encoding is the rest.
RENDER_SHARE = 0.7


class RelightEngine(Protocol):
    """What the local backend needs of an engine (`inference.engines.base.RelightEngine` is one):
    the subject relit `params.number_of_images` times, RGB, sized `params.output_size`."""

    def relight(
        self,
        subject: Image.Image,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]: ...


class LocalBackend:
    name = Backend.LOCAL

    def __init__(self, engine: RelightEngine, executor: Executor) -> None:
        self.engine = engine
        self.executor = executor

    def _render_sync(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None,
    ) -> BackendResult:
        def rendering(fraction: float) -> None:
            if progress is not None:
                progress(fraction * RENDER_SHARE)

        started = perf_counter()
        images = self.engine.relight(job_input.image, params, seed, rendering)
        rendered = perf_counter()
        encoded = []
        for index, image in enumerate(images, start=1):
            encoded.append(
                RenderedImage(
                    data=encode_image(image, params.output_format, params.output_quality),
                    content_type=params.output_format.content_type,
                    width=image.width,
                    height=image.height,
                    seed=seed,
                )
            )
            if progress is not None:
                progress(RENDER_SHARE + (1 - RENDER_SHARE) * index / len(images))
        return BackendResult(
            images=encoded,
            timings={
                "engine_ms": round((rendered - started) * 1000, 2),
                "encode_ms": round((perf_counter() - rendered) * 1000, 2),
            },
        )

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        refuse_backgrounds(self.name, params)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, self._render_sync, job_input, params, seed, progress
        )
