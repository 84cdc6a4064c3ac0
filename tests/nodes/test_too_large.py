"""A request too large for a node (over its latent budget, or out of GPU memory) fails the job
with `request_too_large` and leaves the node's circuit breaker closed: a real `relight-node`
(classic engine, a tiny RELIGHT_NODE_LATENT_BUDGET) and the worker's GPU dispatcher."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from PIL import Image
from redis.asyncio import Redis

from relight.backends.attempts import BackendCall
from relight.backends.render_backend import JobInput
from relight.core.config import Settings
from relight.core.errors import BackendFailed
from relight.core.params import Backend, RelightParams
from relight.nodes.breaker import CircuitState
from relight.nodes.dispatch import GpuDispatcher
from tests.conftest import example_bytes
from tests.nodes.processes import NodeProcess, node_process


@pytest.fixture
async def namespace(redis: Redis) -> AsyncIterator[str]:
    name = f"relight:test-too-large:{uuid.uuid4().hex[:8]}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
def small_node(settings: Settings, namespace: str, tmp_path: Path) -> Iterator[NodeProcess]:
    with node_process(
        "small-1",
        redis_url=settings.redis_url,
        namespace=namespace,
        log_dir=tmp_path,
        extra_env={"RELIGHT_NODE_LATENT_BUDGET": "1000"},
    ) as process:
        yield process


async def test_a_request_too_large_fails_without_opening_the_breaker(
    settings: Settings, namespace: str, small_node: NodeProcess, redis: Redis
) -> None:
    config = settings.model_copy(
        update={
            "gpu_namespace": namespace,
            "gpu_nodes": small_node.url,
            "gpu_discovery": False,
            "gpu_breaker_failures": 1,  # one counted failure would open it
        }
    )
    data = example_bytes()
    async with httpx.AsyncClient(timeout=30) as http:
        dispatcher = GpuDispatcher(settings=config, redis=redis, http=http)
        for _ in range(3):
            job = JobInput(
                job_id=uuid.uuid4(),
                data=data,
                url=None,
                image=Image.open(BytesIO(data)),
                backend_requested=Backend.GPU,
            )
            calls: list[BackendCall] = []
            with pytest.raises(BackendFailed) as failed:
                await dispatcher.render(job, RelightParams(prompt="a cat"), 1, calls)
            assert (failed.value.code, failed.value.retryable) == ("request_too_large", False)
            assert [call.outcome for call in calls] == ["too_large"]
            node_id = dispatcher.static[0].id
            assert await dispatcher.breaker.state(node_id) is CircuitState.CLOSED
