"""The node's heartbeat in Redis, so workers discover it and see its load."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relight.nodes import registry
from relight.nodes.registry import NodeInfo

logger = logging.getLogger(__name__)


class Heartbeat:
    """Writes `describe()` every `interval_s`, and at once when `changed()` is called (a
    request starts or ends), from one task so writes never arrive out of order."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        describe: Callable[[], NodeInfo],
        *,
        interval_s: float,
        ttl_s: float,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.describe = describe
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def changed(self) -> None:
        self._changed.set()

    async def beat(self) -> None:
        try:
            node = self.describe()
            await registry.publish_heartbeat(self.redis, self.namespace, node, self.ttl_s)
        except (RedisError, OSError):
            logger.warning("heartbeat failed: workers may not see this node", exc_info=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval_s)
            self._changed.clear()
            await self.beat()

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await registry.withdraw(self.redis, self.namespace, self.describe().id)
