"""Reading the tenant weights that relight/jobs/queue.py mirrors into Redis, for the tests."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from relight.tenants.weight_mirror import tenant_weights_key


async def mirrored_weight(
    redis: Redis, queue_name: str, tenant_id: uuid.UUID | str
) -> bytes | None:
    """The weight the workers of `queue_name` read for the tenant (None: counted as 1)."""
    weight: bytes | None = await redis.hget(tenant_weights_key(queue_name), str(tenant_id))  # type: ignore[misc]
    return weight
