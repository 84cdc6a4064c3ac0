"""What a node does with a request: hold one of its `capacity` render threads, decode, render
on it (so the event loop keeps answering health checks and refusals), encode.
Requests rendering at the same time may share denoising passes inside the engine (batching).

A node's render threads are its own; the *slots* of `relight.nodes.slots` are the workers'
holds on a node, counted in Redis.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

from PIL import Image

from inference.engines.base import RelightEngine
from inference.node import metrics
from inference.node.admission import LatentBudget, request_cost
from relight.core.errors import InvalidImage, InvalidParameter, RelightError
from relight.core.images import decode_image, encode_image
from relight.core.params import RelightParams
from relight.nodes.wire import NodeImage, NodeRequest, NodeResult

logger = logging.getLogger(__name__)


class NodeBusy(RelightError):
    status_code = 503
    code = "node_busy"


class BackgroundNotServed(RelightError):
    status_code = 422
    code = "background_not_served"


class RenderAbandoned(Exception):
    """Raised at the engine's next step once the client went away: frees the render thread
    early."""


class NodeService:
    def __init__(
        self,
        engine: RelightEngine,
        *,
        node_id: str,
        capacity: int,
        max_input_bytes: int,
        max_input_pixels: int,
        model_digest: str | None = None,
        latent_budget: LatentBudget | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.capacity = capacity
        self.max_input_bytes = max_input_bytes
        self.max_input_pixels = max_input_pixels
        # The model folder's digest, returned with every result (see inference/model_folder.py).
        self.model_digest = model_digest
        self.on_change = on_change
        self.budget = latent_budget
        self.in_flight = 0
        self.executor = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="node-engine")

    def take_render_thread(self) -> None:
        """Claim a render thread or refuse at once (no await between the check and the claim)."""
        if self.in_flight >= self.capacity:
            metrics.BUSY_REFUSALS.inc()
            raise NodeBusy(
                f"this node is running {self.in_flight} of {self.capacity} requests; retry later",
                extra={"retry_after": 1},
            )
        self.in_flight += 1
        self.on_change()

    def free_render_thread(self) -> None:
        self.in_flight -= 1
        self.on_change()

    def decode(self, request: NodeRequest) -> tuple[Image.Image, Image.Image | None]:
        """The subject, and the background when the request carries one."""
        subject = self._image(request.image, "image")
        background = None
        if request.background is not None:
            background = self._image(request.background, "background")
        source = request.params.background_source
        if source is not None and not self.engine.serves_backgrounds:
            raise BackgroundNotServed(
                "this node does not relight onto backgrounds (its model folder has no "
                "iclight_sd15_fbc.safetensors)"
            )
        if source is not None and source.needs_image and background is None:
            raise InvalidParameter(
                f"background: background_source {source.value!r} needs a background image",
                extra={"field": "background"},
            )
        return subject, background

    def _image(self, data: str, field: str) -> Image.Image:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidImage(f"`{field}` is not valid base64") from exc
        return decode_image(raw, max_bytes=self.max_input_bytes, max_pixels=self.max_input_pixels)

    def _render(
        self,
        images_in: tuple[Image.Image, Image.Image | None],
        params: RelightParams,
        seed: int,
        progress: Callable[[float], None],
    ) -> NodeResult:
        subject, background = images_in
        started = perf_counter()
        try:
            if self.budget is None:
                images = self.engine.relight(subject, params, seed, progress, background=background)
            else:
                # Waits for room (the stream pings meanwhile); a client gone stops the wait.
                with self.budget.hold(request_cost(params), check=lambda: progress(0.0)):
                    images = self.engine.relight(
                        subject, params, seed, progress, background=background
                    )
        except Exception:
            metrics.RENDERS.labels("error").inc()
            raise
        rendered = perf_counter()
        metrics.RENDERS.labels("ok").inc()
        metrics.RENDER_SECONDS.observe(rendered - started)
        encoded = [
            NodeImage(
                index=index,
                content_type=params.output_format.content_type,
                width=image.width,
                height=image.height,
                seed=seed,
                data=base64.b64encode(
                    encode_image(image, params.output_format, params.output_quality)
                ).decode(),
            )
            for index, image in enumerate(images)
        ]
        return NodeResult(
            node=self.node_id,
            engine=self.engine.name,
            model=self.engine.model,
            model_digest=self.model_digest,
            seed=seed,
            images=encoded,
            timings={
                "engine_ms": round((rendered - started) * 1000, 2),
                "encode_ms": round((perf_counter() - rendered) * 1000, 2),
            },
        )

    async def start(
        self, request: NodeRequest, progress: Callable[[float], None]
    ) -> concurrent.futures.Future[NodeResult]:
        """Take a render thread, decode the subject, and start rendering; the thread is freed
        when the engine is done (not when the client goes away: the GPU is busy until then). A
        request over the whole latent budget is refused before it takes a render thread."""
        if self.budget is not None:
            self.budget.refuse_if_too_large(request_cost(request.params))
        self.take_render_thread()
        loop = asyncio.get_running_loop()
        try:
            images = await loop.run_in_executor(self.executor, self.decode, request)
        except BaseException as exc:
            self.free_render_thread()
            if isinstance(exc, RelightError):
                metrics.RENDERS.labels("rejected").inc()
            raise
        future = self.executor.submit(self._render, images, request.params, request.seed, progress)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self.free_render_thread))
        return future

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
