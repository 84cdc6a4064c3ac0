"""Cancel while running on a GPU node (issue 16): a real `relight-node` process with the tiny
IC-Light model; the worker closes the progress stream, the node stops between denoising steps
and frees its slot at once, and the job ends CANCELED, refunded once, with nothing stored."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.models import CreditEntry
from relight.nodes import slots
from relight.nodes.wire import RELIGHT_PATH
from tests.conftest import TenantKey, example_bytes
from tests.fakes.segmind import background_worker, relight_client
from tests.helpers import get_record, get_status
from tests.nodes.processes import NodeProcess, clear_slots, node_process

pytestmark = pytest.mark.slow


@pytest.fixture
def namespace() -> str:
    return f"relight:test-cancel-node:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def iclight_node(
    settings: Settings, namespace: str, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[NodeProcess]:
    with node_process(
        "cancel-1",
        redis_url=settings.redis_url,
        namespace=namespace,
        log_dir=tmp_path,
        model_dir=tiny_model_dir,
        startup_timeout_s=120,
    ) as process:
        yield process


async def test_canceling_a_job_on_a_node_frees_its_slot_and_refunds_it_once(
    settings: Settings,
    namespace: str,
    iclight_node: NodeProcess,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    config = settings.model_copy(update={"gpu_namespace": namespace, "gpu_wait_s": 30.0})
    # Many denoising steps on large images: far longer than the test waits after the cancel.
    slow = {
        "prompt": "a cat, warm sunset light",
        "subject_image": base64.b64encode(example_bytes()).decode(),
        "width": 1024,
        "height": 1024,
        "highres_scale": 1.0,
        "steps": 100,
        "number_of_images": 4,
        "backend": "gpu",
    }
    try:
        async with relight_client(config) as client, background_worker(config):
            response = await client.post("/v2/ic-light", headers=tenant.headers, json=slow)
            assert response.status_code == 202, response.text
            request_id = response.json()["request_id"]
            for _ in range(1200):
                status = await get_status(client, tenant, request_id)
                if status["status"] == "PROCESSING" and (status["progress"] or 0) > 0:
                    break
                await asyncio.sleep(0.05)
            assert status["status"] == "PROCESSING", status
            assert iclight_node.health()["in_flight"] == 1

            canceled = await client.post(
                f"/v2/requests/{request_id}/cancel", headers=tenant.headers
            )
            assert canceled.status_code == 200, canceled.text
            assert canceled.json()["status"] == "CANCELED"

            # The node stops at its next denoising step: its slot is free within moments.
            for _ in range(100):
                if iclight_node.health()["in_flight"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert iclight_node.health()["in_flight"] == 0
            for _ in range(100):
                if (await slots.slots_in_use(redis, namespace)).get("cancel-1", 0) == 0:
                    break
                await asyncio.sleep(0.05)
            assert (await slots.slots_in_use(redis, namespace)).get("cancel-1", 0) == 0
            record = await get_record(client, tenant, request_id)
    finally:
        await clear_slots(redis, namespace)
    assert record["status"] == "CANCELED"
    assert record["credits"]["charged"] == 0
    assert record.get("outputs") in (None, [])
    folder = settings.storage_dir / "outputs" / str(tenant.tenant_id) / request_id
    assert not folder.exists() or not any(folder.iterdir())
    async with sessionmaker() as session:
        entries = await session.scalars(
            select(CreditEntry).where(CreditEntry.job_id == uuid.UUID(request_id))
        )
        assert Counter(entry.kind for entry in entries) == {"reserve": 1, "refund": 1}


async def test_a_plain_json_client_that_hangs_up_frees_the_render_thread(
    iclight_node: NodeProcess,
) -> None:
    # A client of the node's plain JSON answer (no progress stream) that gives up mid-render.
    body = {
        "image": base64.b64encode(example_bytes()).decode(),
        "params": {
            "prompt": "a cat, warm sunset light",
            "width": 1024,
            "height": 1024,
            "highres_scale": 1.0,
            "steps": 100,
            "number_of_images": 4,
        },
        "seed": 7,
    }
    async with httpx.AsyncClient(base_url=iclight_node.url) as node:
        request = asyncio.create_task(node.post(RELIGHT_PATH, json=body, timeout=120))
        for _ in range(400):
            if iclight_node.health()["in_flight"] == 1:
                break
            await asyncio.sleep(0.05)
        assert iclight_node.health()["in_flight"] == 1
        request.cancel()  # hang up
        with contextlib.suppress(asyncio.CancelledError):
            await request

    # The node notices within a check or two and stops at its next denoising step.
    for _ in range(100):
        if iclight_node.health()["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert iclight_node.health()["in_flight"] == 0
