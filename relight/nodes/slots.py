"""Slots: how many requests each node runs, counted in Redis across every worker.

A node's slots are a sorted set `{namespace}:slots:{node_id}` of holders scored by when their
hold expires (Redis server time, so workers' clocks do not matter). Taking a slot is one Lua
script: drop expired holders, then add ours only if the node is below its capacity, so no
number of concurrent workers can exceed it. A holder renews its slot while its request runs;
one that died stops renewing, and its slot frees itself after the TTL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from relight.nodes.registry import NodeInfo

# KEYS: the slot sets of the candidate nodes, then the index of nodes with slots.
# ARGV: holder, ttl in ms, then for each candidate its capacity and its id.
# Picks the least-loaded node (in use / capacity, then fewest in use, then list order) among
# those with a free slot; returns its position (1-based) or 0 when every one is full.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local holder = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local count = #KEYS - 1
local best, best_load, best_used = 0, nil, nil
for i = 1, count do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
  local capacity = tonumber(ARGV[1 + 2 * i])
  local used = redis.call('ZCARD', KEYS[i])
  if used < capacity then
    local load = used / capacity
    if best == 0 or load < best_load or (load == best_load and used < best_used) then
      best, best_load, best_used = i, load, used
    end
  end
end
if best > 0 then
  redis.call('ZADD', KEYS[best], now_ms + ttl_ms, holder)
  redis.call('PEXPIRE', KEYS[best], ttl_ms * 2)
  redis.call('SADD', KEYS[count + 1], ARGV[2 + 2 * best])
end
return best
"""

# KEYS: one slot set. ARGV: holder, ttl in ms. 1 when the holder still held the slot.
_RENEW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl_ms = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now_ms + ttl_ms, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl_ms * 2)
  return 1
end
return 0
"""

# KEYS: slot sets. Returns the number of unexpired holders of each.
_COUNT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local counts = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
  counts[i] = redis.call('ZCARD', KEYS[i])
end
return counts
"""


def slots_key(namespace: str, node_id: str) -> str:
    return f"{namespace}:slots:{node_id}"


def slot_index_key(namespace: str) -> str:
    return f"{namespace}:slot-nodes"


@dataclass(frozen=True)
class SlotLease:
    """A slot held on `node` by `holder` until released (or until it stops being renewed)."""

    namespace: str
    node: NodeInfo
    holder: str

    @property
    def key(self) -> str:
        return slots_key(self.namespace, self.node.id)


async def acquire_least_loaded(
    redis: Redis,
    namespace: str,
    nodes: Sequence[NodeInfo],
    ttl_s: float,
    holder: str | None = None,
) -> SlotLease | None:
    """Take a slot on the least-loaded of `nodes` that has one free; None when all are full."""
    if not nodes:
        return None
    holder = holder or uuid.uuid4().hex
    keys = [slots_key(namespace, node.id) for node in nodes] + [slot_index_key(namespace)]
    args = [holder, str(max(1, int(ttl_s * 1000)))]
    for node in nodes:
        args += [str(node.capacity), node.id]
    chosen = int(await redis.eval(_ACQUIRE, len(keys), *keys, *args))  # type: ignore[misc]
    if chosen == 0:
        return None
    return SlotLease(namespace=namespace, node=nodes[chosen - 1], holder=holder)


async def renew(redis: Redis, lease: SlotLease, ttl_s: float) -> bool:
    """Extend the hold; False when it had already expired (the slot may be someone else's)."""
    renewed = await redis.eval(  # type: ignore[misc]
        _RENEW, 1, lease.key, lease.holder, str(max(1, int(ttl_s * 1000)))
    )
    return bool(renewed)


async def release(redis: Redis, lease: SlotLease) -> None:
    await redis.zrem(lease.key, lease.holder)


async def slots_in_use(redis: Redis, namespace: str) -> dict[str, int]:
    """Slots held right now on each node that has had any, by node id (for metrics)."""
    members = await redis.smembers(slot_index_key(namespace))  # type: ignore[misc]
    node_ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    if not node_ids:
        return {}
    keys = [slots_key(namespace, node_id) for node_id in node_ids]
    counts = await redis.eval(_COUNT, len(keys), *keys)  # type: ignore[misc]
    return {node_id: int(count) for node_id, count in zip(node_ids, counts, strict=True)}
