"""GPU nodes as operators see them: the registry's nodes, their slots and their breaker.

Reads the same Redis state the workers act on (`relight.nodes`): heartbeats from the
registry, slots held from `slots`, the circuit from `breaker`; it changes none of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from relight.core.config import Settings
from relight.nodes import registry
from relight.nodes.breaker import CircuitBreaker
from relight.nodes.registry import NodeInfo
from relight.nodes.slots import slots_in_use


@dataclass(frozen=True)
class NodeStatus:
    node: NodeInfo
    heartbeat_age_s: float | None  # None: a static node without a heartbeat, or an old node
    slots_in_use: int
    breaker: str


async def node_statuses(redis: Redis, settings: Settings) -> list[NodeStatus]:
    """Every node known now (static and beating), with its load and its circuit's state."""
    namespace = settings.gpu_namespace
    beats = await registry.live_heartbeats(redis, namespace) if settings.gpu_discovery else []
    beat_at = {node.id: at for node, at in beats}
    nodes = registry.merge(
        registry.static_nodes(settings.static_gpu_nodes), [node for node, _ in beats]
    )
    used = await slots_in_use(redis, namespace)
    breaker = CircuitBreaker(
        redis,
        namespace,
        failures=settings.gpu_breaker_failures,
        cooldown_s=settings.gpu_breaker_cooldown_s,
    )
    now = time.time()
    statuses = []
    for node in sorted(nodes, key=lambda n: n.id):
        at = beat_at.get(node.id)
        statuses.append(
            NodeStatus(
                node=node,
                heartbeat_age_s=max(0.0, now - at) if at is not None else None,
                slots_in_use=used.get(node.id, 0),
                breaker=(await breaker.state(node.id)).value,
            )
        )
    return statuses
