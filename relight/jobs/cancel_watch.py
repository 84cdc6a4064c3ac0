"""Abandoning a render once its job was canceled (or taken back) while it ran.

The watcher wakes on the `finished` notification a cancel publishes and re-reads the row every
`RELEASE_RECHECK_S` in case that message is lost (or Redis is away). The render is then
abandoned at its next safe point: the progress callback raises `RenderAbandoned` (the local
engine's next stage), and the render's task is cancelled (which closes a GPU node's stream, so
the node stops at its next denoising step, or Segmind's pending call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from relight.backends.render_backend import BackendResult

logger = logging.getLogger(__name__)

# How often a running job's row is re-read for a cancel, should its notification be lost.
RELEASE_RECHECK_S = 2.0


class RenderAbandoned(Exception):
    """Raised in a backend's progress callback once its job was canceled: stops the engine."""


async def _until_mentioned(pubsub: PubSub, job_id: str, timeout_s: float) -> None:
    """Wait until `job_id` is published on the subscribed channel, or `timeout_s` passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (left := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        data = message.get("data") if message is not None else None
        if isinstance(data, bytes):
            data = data.decode()
        if data == job_id:
            return


async def watch_until_released(
    redis: Redis, channel: str, job_id: str, still_holds: Callable[[], Awaitable[bool]]
) -> None:
    """Return once `still_holds()` says the attempt no longer holds the job."""
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                while await still_holds():
                    await _until_mentioned(pubsub, job_id, RELEASE_RECHECK_S)
                return
        except (RedisError, OSError):
            logger.warning("cancel notifications lost for job %s", job_id, exc_info=True)
            if not await still_holds():
                return
            await asyncio.sleep(RELEASE_RECHECK_S)


async def render_until_released(
    render: Awaitable[BackendResult], released: Awaitable[None], abandoned: threading.Event
) -> BackendResult | None:
    """The render's result, or None when `released` finished first: then the render is
    abandoned (`abandoned` set, its task cancelled) before returning."""
    rendering = asyncio.ensure_future(render)
    watcher = asyncio.ensure_future(released)
    try:
        await asyncio.wait({rendering, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        abandoned.set()
        rendering.cancel()
        watcher.cancel()
        await asyncio.wait({rendering, watcher})
        raise
    if rendering.done():
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        return rendering.result()
    abandoned.set()
    rendering.cancel()
    # Closes a node's stream (the node stops at its next step) or Segmind's pending call.
    await asyncio.wait({rendering})
    if not rendering.cancelled():
        rendering.exception()  # retrieved: the job is gone, whatever the render did
    return None
