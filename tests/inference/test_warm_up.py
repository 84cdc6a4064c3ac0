"""A node warms its engine up (a tiny render per model) before its first heartbeat, so workers
find it only once it renders at full speed."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from inference.engines.classic import ClassicEngine
from inference.engines.iclight import ICLightEngine
from inference.iclight.weights import Variant
from inference.node.app import create_node_app
from inference.node.settings import NodeSettings
from relight.nodes import registry
from tests.conftest import TEST_REDIS_URL


class Passes:
    def __init__(self) -> None:
        self.images: list[int] = []

    def pass_ran(self, images: int, requests: int, steps: int, seconds: float) -> None:
        self.images.append(images)


class SlowToWarm(ClassicEngine):
    """The classic engine with a warm-up that waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.may_finish = threading.Event()

    def warm_up(self) -> list[str]:
        self.started.set()
        assert self.may_finish.wait(30)
        return ["classic"]


@pytest.fixture
async def namespace(redis: Redis) -> AsyncIterator[str]:
    name = f"relight:test-warm-up:{uuid.uuid4().hex[:8]}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


def test_the_engine_warms_up_every_model_unobserved(tiny_fc_and_fbc_model_dir: Path) -> None:
    passes = Passes()
    engine = ICLightEngine.from_dir(
        tiny_fc_and_fbc_model_dir, device="cpu", batch_observer=passes, max_batch_images=4
    )
    assert engine.warm_up() == [Variant.FC, Variant.FBC]
    assert passes.images == []  # the node's metrics count requests only
    assert engine.batch_observer is passes
    assert engine.batcher is not None
    assert engine.batcher.observer is passes


async def test_the_first_heartbeat_follows_the_warm_up(redis: Redis, namespace: str) -> None:
    engine = SlowToWarm()
    settings = NodeSettings(
        engine="classic", redis_url=TEST_REDIS_URL, namespace=namespace, heartbeat_s=0.2
    )
    app = create_node_app(settings, node_id="warming-1", url="http://warming-1", engine=engine)
    started = asyncio.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    serving = asyncio.create_task(serve())
    try:
        assert await asyncio.to_thread(engine.started.wait, 10)
        await asyncio.sleep(0.5)  # a few heartbeat intervals
        assert not started.is_set()
        assert await registry.live_nodes(redis, namespace) == []
        engine.may_finish.set()
        await asyncio.wait_for(started.wait(), 10)
        assert [node.id for node in await registry.live_nodes(redis, namespace)] == ["warming-1"]
    finally:
        engine.may_finish.set()
        stop.set()
        await serving
