"""arq's private storage format: the one place in Relight that writes or claims arq's jobs
without going through arq.

arq keeps an enqueued job as a key `arq:job:<id>` holding the job's definition (`{"t", "f", "a",
"k", "et"}`, serialized with the serializer its pool was given: JSON here), expiring a day
after the job is due, plus a member of the queue's sorted set scored by the due time (ms). A
worker claims a job by setting `arq:in-progress:<id>` for the in-progress timeout, only if no
other worker did and the job is still enqueued and due; `arq:result:<id>` is the kept result.

Relight writes and claims that layout itself, in Lua scripts, for what no public arq API gives:
- speed: an enqueue is one atomic round trip that also lists the job in its tenant's turns and
  wakes idle workers (arq's `enqueue_job` takes WATCH, EXISTS and MULTI/EXEC, then a PUBLISH),
  and a claim is one round trip (arq's `Worker.start_jobs` takes WATCH, EXISTS, ZSCORE and
  MULTI/EXEC);
- fair claims: which tenant's job starts next must be decided in the same atomic
  step as arq's claim, and arq has one queue per worker and no notion of tenants.

Nothing else in `relight/` knows these keys, and `relight/` never imports arq, so the constants
below are copies of `arq.constants`. tests/worker/test_arq_contract.py proves the copy: it
enqueues the same job with arq's own `enqueue_job` and with `add_job` and compares what lands
in Redis, runs a job enqueued here on arq's own Worker, and pins the source of the arq methods
that this module and worker/wakeup.py imitate or override, so an arq upgrade that changes them
fails there with the name of what to re-check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis

# arq.constants, copied (see the module docstring).
JOB_KEY_PREFIX = "arq:job:"
RESULT_KEY_PREFIX = "arq:result:"
IN_PROGRESS_KEY_PREFIX = "arq:in-progress:"
# How long an enqueued job's definition outlives its due time (arq's `expires_extra_ms`).
EXPIRES_EXTRA_MS = 86_400_000


class FairKeys(NamedTuple):
    """Relight's own keys for fair turns between tenants, kept by the same scripts as arq's
    (named in relight/jobs/queue.py, which documents the layout)."""

    tenant_queue_prefix: str
    ring: str
    job_tenant: str
    turn_counter: str
    weights: str
    served: str


# arq's `enqueue_job`, atomic without WATCH. KEYS: job key, result key, queue, wake channel, the
# tenant's queue, then FairKeys' ring, job → tenant hash, weights. ARGV: expiry ms, payload,
# score, job id, "1" to wake the workers, tenant id ("" for a job that belongs to no tenant),
# the tenant's weight ("" to leave it as it is), the job's score in its tenant's queue (its lane's
# offset plus its due time: `lane_score`). 0 when arq already holds the job.
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[4])
  redis.call('ZADD', KEYS[6], 'NX', 0, ARGV[6])
  redis.call('HSET', KEYS[7], ARGV[4], ARGV[6])
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[8], ARGV[6], ARGV[7]) end
end
if ARGV[5] == '1' then redis.call('PUBLISH', KEYS[4], '') end
return 1
"""

# arq's claim of an enqueued job (`Worker.start_jobs`: not in progress elsewhere, still enqueued and
# due, then mark it in progress). KEYS: in-progress key, queue. ARGV: job id, now (ms),
# in-progress timeout (ms). The job's score, or false when another worker has it or it is not
# due.
CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""

# CLAIM_SCRIPT with weighted turns between tenants. When arq's candidate belongs to no tenant it
# is claimed as above. Otherwise the tenants are tried from the oldest turn: the first due job of
# a tenant's queue that is not in progress is claimed and counted against the tenant's weight (1
# unless the weights hash says more); the tenant goes to the back of the ring once it started
# that many jobs in its turn (weighted round-robin). Entries of jobs gone from arq's queue
# (finished) are dropped on the way, and a tenant with none left leaves the ring, its turn reset.
# If no tenant has a job to give, the candidate is claimed after all. A tenant's first ARGV[6]
# entries are looked at (its running and deferred jobs come first), which bounds the work per
# claim. KEYS: queue, then FairKeys' ring, job → tenant hash, turn counter, weights, served.
# ARGV: candidate job id, now (ms), in-progress timeout (ms), in-progress key prefix, tenant
# queue key prefix, entries per tenant. {job id, score}, or false when nothing was claimed.
FAIR_CLAIM_SCRIPT = """
local function claim(job_id)
  local in_progress = ARGV[4] .. job_id
  if redis.call('EXISTS', in_progress) == 1 then return false end
  local score = redis.call('ZSCORE', KEYS[1], job_id)
  if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
  redis.call('PSETEX', in_progress, ARGV[3], '1')
  return score
end
local function served(tenant)
  local weight = tonumber(redis.call('HGET', KEYS[5], tenant)) or 1
  if redis.call('HINCRBY', KEYS[6], tenant, 1) >= weight then
    redis.call('HDEL', KEYS[6], tenant)
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), tenant)
  end
end
local candidate = ARGV[1]
if redis.call('HEXISTS', KEYS[3], candidate) == 1 then
  for _, tenant in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local tenant_queue = ARGV[5] .. tenant
    for _, job_id in ipairs(redis.call('ZRANGE', tenant_queue, 0, tonumber(ARGV[6]) - 1)) do
      if not redis.call('ZSCORE', KEYS[1], job_id) then
        redis.call('ZREM', tenant_queue, job_id)
        redis.call('HDEL', KEYS[3], job_id)
      else
        local score = claim(job_id)
        if score then
          served(tenant)
          return {job_id, score}
        end
      end
    end
    if redis.call('ZCARD', tenant_queue) == 0 then
      redis.call('ZREM', KEYS[2], tenant)
      redis.call('HDEL', KEYS[6], tenant)
    end
  end
end
local score = claim(candidate)
if score then return {candidate, score} end
return false
"""
# How many entries of one tenant's queue a fair claim looks at (see FAIR_CLAIM_SCRIPT).
FAIR_CLAIM_SCAN = 256

# A tenant's queue is ordered by lane first, then by due time: a job's score there is its lane's
# rank (0 high, 1 normal, 2 low) times LANE_SPAN plus its due time in ms. LANE_SPAN is beyond
# any due time in ms (year 2286), and three spans stay well within a double's exact integers
# (2**53), so the scores stay exact and the lane is `score // LANE_SPAN`.
LANE_SPAN = 10**13


def lane_score(rank: int, due_ms: int) -> int:
    """A job's score in its tenant's queue: lane `rank` first, then due time."""
    return rank * LANE_SPAN + due_ms


def job_definition(function: str, args: Sequence[Any], enqueue_time_ms: int) -> dict[str, Any]:
    """What arq stores for a job (`arq.jobs.serialize_job`): first try, no keyword arguments."""
    return {"t": None, "f": function, "a": tuple(args), "k": {}, "et": enqueue_time_ms}


async def add_job(
    redis: Redis,
    queue_name: str,
    function: str,
    job_id: str,
    args: Sequence[Any],
    *,
    serializer: Callable[[dict[str, Any]], bytes],
    wake_channel: str,
    defer_s: float | None = None,
    fair: FairKeys | None = None,
    tenant_id: str | None = None,
    weight: int | None = None,
    lane_rank: int = 1,
) -> bool:
    """Enqueue `function(*args)` as arq's own `enqueue_job` would (same keys, payload, score and
    expiry; refused when `job_id` is enqueued, running or kept as a result) and publish on
    `wake_channel` when it is due now. With `fair` and `tenant_id`, the job is also listed in
    the tenant's turns, in lane `lane_rank` of the tenant's queue (0 starts first), and `weight`
    (when given) recorded as the tenant's. False when arq already holds the job."""
    now_ms = round(time.time() * 1000)
    score = now_ms + round((defer_s or 0) * 1000)
    payload = serializer(job_definition(function, args, now_ms))
    # "" for a job that takes no turns (no tenant, or fair turns not asked for).
    tenant = tenant_id if fair is not None and tenant_id is not None else ""
    keys = [JOB_KEY_PREFIX + job_id, RESULT_KEY_PREFIX + job_id, queue_name, wake_channel]
    if fair is not None:
        keys += [fair.tenant_queue_prefix + tenant, fair.ring, fair.job_tenant, fair.weights]
    argv: list[bytes | str | int] = [
        score - now_ms + EXPIRES_EXTRA_MS,
        payload,
        score,
        job_id,
        "1" if score <= now_ms else "0",
        tenant,
        "" if weight is None else weight,
        lane_score(lane_rank, score),
    ]
    # A Script object is cheap (it hashes the source); it runs EVALSHA and loads the script
    # when Redis does not know it yet.
    return bool(await redis.register_script(ENQUEUE_SCRIPT)(keys=keys, args=argv))


async def claim_job(
    redis: Redis,
    queue_name: str,
    candidate: str,
    in_progress_timeout_s: float,
    fair: FairKeys | None = None,
) -> tuple[str, int] | None:
    """Mark a due job in progress as arq's worker does: (its id, its score), or None when
    none could be had. With `fair`, the job of the tenant whose turn it is may be claimed in
    place of `candidate` (FAIR_CLAIM_SCRIPT)."""
    now_ms = round(time.time() * 1000)
    timeout_ms = int(in_progress_timeout_s * 1000)
    if fair is None:
        keys = [IN_PROGRESS_KEY_PREFIX + candidate, queue_name]
        score = await redis.register_script(CLAIM_SCRIPT)(
            keys=keys, args=[candidate, now_ms, timeout_ms]
        )
        return None if score is None else (candidate, int(float(score)))
    keys = [queue_name, fair.ring, fair.job_tenant, fair.turn_counter, fair.weights, fair.served]
    args: list[str | int] = [
        candidate,
        now_ms,
        timeout_ms,
        IN_PROGRESS_KEY_PREFIX,
        fair.tenant_queue_prefix,
        FAIR_CLAIM_SCAN,
    ]
    claimed = await redis.register_script(FAIR_CLAIM_SCRIPT)(keys=keys, args=args)
    if not claimed:
        return None
    job_id, score = claimed
    if isinstance(job_id, bytes):
        job_id = job_id.decode()
    return str(job_id), int(float(score))
