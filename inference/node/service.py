"""What a node does with a request: hold one of its capacity slots, decode, render on a
thread (one per slot, so the event loop keeps answering health checks and refusals), encode.
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
from relight.errors import InvalidImage, RelightError
from relight.images import decode_image, encode_image
from relight.nodes.protocol import NodeImage, NodeRequest, NodeResult
from relight.params import RelightParams

logger = logging.getLogger(__name__)


class NodeBusy(RelightError):
    status_code = 503
    code = "node_busy"


class NodeService:
    def __init__(
        self,
        engine: RelightEngine,
        *,
        node_id: str,
        capacity: int,
        max_input_bytes: int,
        max_input_pixels: int,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.capacity = capacity
        self.max_input_bytes = max_input_bytes
        self.max_input_pixels = max_input_pixels
        self.on_change = on_change
        self.in_flight = 0
        self.executor = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="node-engine")

    def take_slot(self) -> None:
        """Claim a slot or refuse at once (no await between the check and the claim)."""
        if self.in_flight >= self.capacity:
            raise NodeBusy(
                f"this node is running {self.in_flight} of {self.capacity} requests; retry later",
                extra={"retry_after": 1},
            )
        self.in_flight += 1
        self.on_change()

    def free_slot(self) -> None:
        self.in_flight -= 1
        self.on_change()

    def decode(self, request: NodeRequest) -> Image.Image:
        try:
            data = base64.b64decode(request.image, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidImage("`image` is not valid base64") from exc
        return decode_image(data, max_bytes=self.max_input_bytes, max_pixels=self.max_input_pixels)

    def _render(
        self,
        subject: Image.Image,
        params: RelightParams,
        seed: int,
        progress: Callable[[float], None],
    ) -> NodeResult:
        started = perf_counter()
        images = self.engine.relight(subject, params, seed, progress)
        rendered = perf_counter()
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
        """Take a slot, decode the subject, and start rendering; the slot is freed when the
        engine is done (not when the client goes away: the GPU is busy until then)."""
        self.take_slot()
        loop = asyncio.get_running_loop()
        try:
            subject = await loop.run_in_executor(self.executor, self.decode, request)
        except BaseException:
            self.free_slot()
            raise
        future = self.executor.submit(self._render, subject, request.params, request.seed, progress)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self.free_slot))
        return future

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
