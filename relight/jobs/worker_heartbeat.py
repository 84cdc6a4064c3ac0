"""Each worker's heartbeat in Redis, for operators to see which workers are alive.

arq's own health check is one key per queue (whichever worker wrote last), so it cannot tell
three live workers from one. Every worker writes `{queue}:worker:{id}` (who it is, when it
started, when it last beat, the tasks it runs now) every BEAT_INTERVAL_S, with a TTL of
KEPT_S, and keeps its id in the sorted set `{queue}:workers` scored by its last beat. A worker
whose last beat is older than STALE_AFTER_S is stale (stopped, hung, or cut off from Redis);
it stays listed, marked, until its key expires. A clean shutdown removes it at once.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass

import orjson
from redis.asyncio import Redis

BEAT_INTERVAL_S = 10.0
# Three beats missed: not a slow Redis round trip, the worker is gone or stuck.
STALE_AFTER_S = 3 * BEAT_INTERVAL_S
# How long a dead worker stays on the page (marked stale) before it is forgotten.
KEPT_S = 3600


@dataclass(frozen=True)
class WorkerBeat:
    """What one worker says about itself at each beat (epoch seconds for the times)."""

    id: str
    host: str
    pid: int
    queue: str
    started_at: float
    last_seen: float
    tasks_running: int  # jobs, webhook deliveries and sweeps it runs now
    max_tasks: int
    tasks_done: int  # completed since it started (failed ones included)


def new_worker_id() -> str:
    """An id that names the worker's host and process, unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def workers_key(queue: str) -> str:
    return f"{queue}:workers"


def worker_key(queue: str, worker_id: str) -> str:
    return f"{queue}:worker:{worker_id}"


async def publish_beat(redis: Redis, beat: WorkerBeat) -> None:
    """Write (or refresh) the worker's heartbeat."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(worker_key(beat.queue, beat.id), orjson.dumps(asdict(beat)), ex=KEPT_S)
        pipe.zadd(workers_key(beat.queue), {beat.id: beat.last_seen})
        # Ids whose key has expired leave the index.
        pipe.zremrangebyscore(workers_key(beat.queue), "-inf", beat.last_seen - KEPT_S)
        await pipe.execute()


async def withdraw(redis: Redis, queue: str, worker_id: str) -> None:
    """Forget a worker at once (it shut down cleanly)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(worker_key(queue, worker_id))
        pipe.zrem(workers_key(queue), worker_id)
        await pipe.execute()


async def read_beats(redis: Redis, queue: str) -> list[WorkerBeat]:
    """The last beat of every worker heard from within KEPT_S, most recently seen first."""
    ids = await redis.zrevrangebyscore(workers_key(queue), "+inf", time.time() - KEPT_S)
    if not ids:
        return []
    names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    payloads = await redis.mget([worker_key(queue, name) for name in names])
    known = set(WorkerBeat.__dataclass_fields__)
    beats = []
    for payload in payloads:
        if payload is None:
            continue
        data = orjson.loads(payload)
        beats.append(WorkerBeat(**{key: value for key, value in data.items() if key in known}))
    return beats
