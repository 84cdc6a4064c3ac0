"""Workers as operators see them: each one's last heartbeat, the stale ones marked.

Reads what every worker writes (`relight.jobs.worker_heartbeat`); changes none of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from relight.jobs.worker_heartbeat import STALE_AFTER_S, WorkerBeat, read_beats


@dataclass(frozen=True)
class WorkerStatus:
    beat: WorkerBeat
    seen_ago_s: float  # since its last heartbeat
    up_s: float  # since it started, as of its last heartbeat
    stale: bool  # no heartbeat for STALE_AFTER_S: stopped, stuck or cut off from Redis


async def worker_statuses(redis: Redis, queue: str) -> list[WorkerStatus]:
    """Every worker heard from lately, live ones first, then by most recently seen."""
    now = time.time()
    statuses = [
        WorkerStatus(
            beat=beat,
            seen_ago_s=max(0.0, now - beat.last_seen),
            up_s=max(0.0, beat.last_seen - beat.started_at),
            stale=now - beat.last_seen > STALE_AFTER_S,
        )
        for beat in await read_beats(redis, queue)
    ]
    return sorted(statuses, key=lambda status: (status.stale, status.seen_ago_s))
