"""The copy of tenants' dispatch weights in Redis, which the workers' fair claim reads.

A tenant's weight lives in Postgres (`tenant.weight`); this hash (tenant id → weight, absent =
1) is its mirror, written after a change commits and again by every submit of the tenant's
jobs. The fair turns that read it are `relight.jobs.queue`'s, which builds on this module (jobs
sit above tenants, so the key is defined here, not there).
"""

from __future__ import annotations

import uuid

from redis.asyncio import Redis


def tenant_weights_key(queue_name: str) -> str:
    """The hash tenant id → weight (jobs started per turn), mirrored from Postgres."""
    return f"{queue_name}:tenant-weights"


async def mirror_tenant_weight(
    redis: Redis, queue_name: str, tenant_id: uuid.UUID, weight: int
) -> None:
    """Tell the workers of `queue_name` a tenant's weight (call after the change commits)."""
    await redis.hset(tenant_weights_key(queue_name), str(tenant_id), str(weight))  # type: ignore[misc]
