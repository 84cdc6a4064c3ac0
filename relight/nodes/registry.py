"""Which GPU nodes exist: static ones from settings, live ones from their Redis heartbeats.

A node writes its description to `{namespace}:node:{id}` with a TTL and keeps its id in the
sorted set `{namespace}:nodes`, scored by when that heartbeat expires; a node that stops
beating drops out of discovery within one TTL, with nothing to clean up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

DISCOVERY_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class NodeInfo:
    """One node: where it answers, what it serves, how many requests it runs at once."""

    id: str
    url: str
    capacity: int
    engine: str | None = None
    model: str | None = None
    device: str | None = None
    in_flight: int = 0
    version: str | None = None
    source: str = "heartbeat"
    backgrounds: bool = False
    model_digest: str | None = None
    matting: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def nodes_key(namespace: str) -> str:
    return f"{namespace}:nodes"


def node_key(namespace: str, node_id: str) -> str:
    return f"{namespace}:node:{node_id}"


async def publish_heartbeat(redis: Redis, namespace: str, node: NodeInfo, ttl_s: float) -> None:
    """Announce (or refresh) `node` for `ttl_s` seconds."""
    ttl_ms = max(1, int(ttl_s * 1000))
    beat_at = time.time()
    expires_ms = int(beat_at * 1000) + ttl_ms
    # `heartbeat_at` rides beside the description (not a NodeInfo field: it changes every
    # beat), for the operators' page to show how old a node's last word is.
    payload = {**node.as_json(), "heartbeat_at": beat_at}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(node_key(namespace, node.id), orjson.dumps(payload), px=ttl_ms)
        pipe.zadd(nodes_key(namespace), {node.id: expires_ms})
        # Ids whose heartbeat expired long ago (a node that died) leave the index.
        pipe.zremrangebyscore(nodes_key(namespace), "-inf", expires_ms - 10 * ttl_ms)
        await pipe.execute()


async def withdraw(redis: Redis, namespace: str, node_id: str) -> None:
    """Remove a node from discovery at once (a clean shutdown)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(node_key(namespace, node_id))
        pipe.zrem(nodes_key(namespace), node_id)
        await pipe.execute()


async def live_nodes(redis: Redis, namespace: str) -> list[NodeInfo]:
    """Nodes whose heartbeat has not expired."""
    return [node for node, _ in await live_heartbeats(redis, namespace)]


async def live_heartbeats(redis: Redis, namespace: str) -> list[tuple[NodeInfo, float | None]]:
    """Nodes whose heartbeat has not expired, each with the time of its last beat (epoch
    seconds; None from a node that does not say)."""
    now_ms = int(time.time() * 1000)
    ids = await redis.zrangebyscore(nodes_key(namespace), now_ms, "+inf")
    if not ids:
        return []
    payloads = await redis.mget([node_key(namespace, _text(node_id)) for node_id in ids])
    nodes = []
    for payload in payloads:
        if payload is None:
            continue
        data = orjson.loads(payload)
        fields = {name: data.get(name) for name in NodeInfo.__dataclass_fields__ if name in data}
        beat_at = data.get("heartbeat_at")
        nodes.append((NodeInfo(**fields), float(beat_at) if beat_at is not None else None))
    return nodes


def static_nodes(pairs: list[tuple[str, int]]) -> list[NodeInfo]:
    """Nodes listed in configuration; their id is their URL."""
    return [
        NodeInfo(id=url, url=url, capacity=capacity, source="static") for url, capacity in pairs
    ]


def merge(static: list[NodeInfo], live: list[NodeInfo]) -> list[NodeInfo]:
    """One entry per node: a live heartbeat describes a static node that has the same URL."""
    by_url = {node.url.rstrip("/"): node for node in static}
    for node in live:
        by_url[node.url.rstrip("/")] = node
    return list(by_url.values())


async def has_live_nodes(redis: Redis, namespace: str) -> bool:
    """Whether some node's heartbeat is current (one cheap query)."""
    now_ms = int(time.time() * 1000)
    return bool(await redis.zcount(nodes_key(namespace), now_ms, "+inf"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def has_background_nodes(redis: Redis, namespace: str) -> bool:
    """Whether some live node relights onto backgrounds (IC-Light fbc)."""
    return any(node.backgrounds for node in await live_nodes(redis, namespace))


async def discovered_gpu_nodes(
    redis: Redis, namespace: str, *, enabled: bool, backgrounds: bool = False
) -> bool:
    """For submit: whether heartbeats show a GPU node (with `backgrounds`: one that relights
    onto backgrounds). False when discovery is off or Redis does not answer: a submit then sees
    only the static list."""
    if not enabled:
        return False
    check = has_background_nodes if backgrounds else has_live_nodes
    try:
        # Bounded: a Redis outage must not hold a submit through the client's retries.
        return await asyncio.wait_for(check(redis, namespace), DISCOVERY_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError):
        return False
