"""Counting what arq's queue holds, for the scaling gauges (`relight.metrics.QueueCounts`).

arq's queue is one sorted set (job id → due time in ms) holding every kind of entry: relight
jobs (`run_job`, whose arq id is the job's UUID), webhook delivery attempts (`webhook:<delivery
id>:<attempt>`, `relight.jobs.queue.delivery_job_id`), deferred retries of both, and arq's cron
runs (`cron:sweep:<ms>`). A job keeps its entry, at its due score, while a worker runs it (the
claim only marks it in progress; the entry goes when the job ends or is deferred for a retry),
so the run_job entries that are due are exactly the jobs waiting to start plus the running ones:
what more workers could take on. A deferred retry (score in the future) is not runnable yet.

Why the queue and not Postgres's job table: the gauge is read on every scrape by both the api
and the workers, and a worker has no session there; Redis is what workers actually pull from
(a job committed but not yet enqueued, or lost until the sweeper puts it back, is no work a new
replica could start); and it is the same read the old gauge made, with the same NaN when Redis
does not answer.

The count is one Lua script (one round trip, atomic): it walks the entries once, O(entries),
answering three numbers, never the ids. The ids' shapes are the contract; a run_job id is
recognized by its UUID shape, so an entry of any other task is never counted as a relight job.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from relight.jobs.queue import DELIVERY_JOB_PREFIX
from relight.metrics import QueueCounts

# KEYS: the queue. ARGV: now (ms), the delivery id prefix. Answers {entries, runnable relight
# jobs, webhook delivery attempts}.
COUNT_SCRIPT = """
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local now = tonumber(ARGV[1])
local prefix = ARGV[2]
local runnable, deliveries = 0, 0
for i = 1, #entries, 2 do
  local id = entries[i]
  if string.sub(id, 1, #prefix) == prefix then
    deliveries = deliveries + 1
  elseif tonumber(entries[i + 1]) <= now
      and string.match(id, '^%x+%-%x+%-%x+%-%x+%-%x+$') then
    runnable = runnable + 1
  end
end
return {#entries / 2, runnable, deliveries}
"""


async def count_queue(redis: Redis, queue_name: str) -> QueueCounts:
    """Every entry of arq's queue `queue_name`, its relight jobs waiting to start or running,
    and its webhook delivery attempts (due or deferred)."""
    now_ms = int(time.time() * 1000)
    entries, runnable, deliveries = await redis.eval(  # type: ignore[misc]
        COUNT_SCRIPT, 1, queue_name, str(now_ms), DELIVERY_JOB_PREFIX
    )
    return QueueCounts(
        entries=int(entries), runnable_jobs=int(runnable), webhook_deliveries=int(deliveries)
    )
