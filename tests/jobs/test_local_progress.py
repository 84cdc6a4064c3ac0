"""The `local` backend reports real progress: the classic engine's stages, then the encoding."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import TenantKey
from tests.helpers import fast_body, get_status, submit

# One image (before, the engine reported progress once per image, so one image jumped from 0 to
# the end), large enough (3072², about 2 s here) for progress writes, which come at most every
# 0.5 s, to land while the request is PROCESSING.
SLOW_LOCAL = fast_body(backend="local", width=1024, height=1024, highres_scale=3)


async def test_progress_moves_while_the_local_engine_renders(
    client: httpx.AsyncClient, tenant: TenantKey, background_worker: None
) -> None:
    request_id = await submit(client, tenant, SLOW_LOCAL)
    seen: list[float] = []
    for _ in range(1200):
        status = await get_status(client, tenant, request_id)
        if status["status"] == "PROCESSING" and status["progress"] is not None:
            seen.append(status["progress"])
        if status["status"] not in ("QUEUED", "PROCESSING"):
            break
        await asyncio.sleep(0.05)
    assert status["status"] == "COMPLETED", status
    # Mid-render, not the 0.99 that the end of the engine's work used to report.
    assert any(0 < value < 0.9 for value in seen), seen
    assert seen == sorted(seen)
