"""Counting what arq's queue holds, for the scaling gauges (`relight.core.metrics.QueueCounts`).

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
answering a few numbers, never the ids; runnable jobs are counted by priority lane (the
`lane` label of `relight_runnable_jobs`), so autoscaling can leave the `low` lane out.
The ids' shapes are the contract; a run_job id is
recognized by its UUID shape, so an entry of any other task is never counted as a relight job.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from relight.core.metrics import QueueCounts
from relight.core.params import Priority
from relight.jobs.arq_format import LANE_SPAN
from relight.jobs.queue import DELIVERY_JOB_PREFIX, job_tenant_key, tenant_queue_prefix

# KEYS: the queue, the job → tenant hash of fair turns. ARGV: now (ms), the delivery id prefix,
# the tenant queue key prefix, the lane span. Answers {entries, runnable relight jobs in the high,
# normal and low lanes, webhook delivery attempts}. A runnable job's lane is read from its score
# in its tenant's queue (`arq_format.lane_score`); one listed in no tenant's queue counts as
# normal.
COUNT_SCRIPT = """
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local now = tonumber(ARGV[1])
local prefix = ARGV[2]
local span = tonumber(ARGV[4])
local lanes = {0, 0, 0}
local deliveries = 0
for i = 1, #entries, 2 do
  local id = entries[i]
  if string.sub(id, 1, #prefix) == prefix then
    deliveries = deliveries + 1
  elseif tonumber(entries[i + 1]) <= now
      and string.match(id, '^%x+%-%x+%-%x+%-%x+%-%x+$') then
    local lane = 1
    local tenant = redis.call('HGET', KEYS[2], id)
    if tenant then
      local score = redis.call('ZSCORE', ARGV[3] .. tenant, id)
      if score then lane = math.floor(tonumber(score) / span) end
    end
    if lane < 0 or lane > 2 then lane = 1 end
    lanes[lane + 1] = lanes[lane + 1] + 1
  end
end
return {#entries / 2, lanes[1], lanes[2], lanes[3], deliveries}
"""


async def count_queue(redis: Redis, queue_name: str) -> QueueCounts:
    """Every entry of arq's queue `queue_name`, its relight jobs waiting to start or running
    (in all and by lane), and its webhook delivery attempts (due or deferred)."""
    now_ms = int(time.time() * 1000)
    entries, high, normal, low, deliveries = await redis.eval(  # type: ignore[misc]
        COUNT_SCRIPT,
        2,
        queue_name,
        job_tenant_key(queue_name),
        str(now_ms),
        DELIVERY_JOB_PREFIX,
        tenant_queue_prefix(queue_name),
        str(LANE_SPAN),
    )
    by_lane = {
        Priority.HIGH.value: int(high),
        Priority.NORMAL.value: int(normal),
        Priority.LOW.value: int(low),
    }
    return QueueCounts(
        entries=int(entries),
        runnable_jobs=sum(by_lane.values()),
        webhook_deliveries=int(deliveries),
        runnable_by_lane=by_lane,
    )
