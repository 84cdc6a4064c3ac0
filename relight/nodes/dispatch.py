"""The `gpu` backend's logic: pick a node, hold a slot on it, call it, fail over.

Per call: the known nodes (static plus live heartbeats) minus those whose circuit is open and
those that already failed this try; a slot on the least-loaded one (atomic across workers);
the call, with the slot renewed while it runs. A node that is unreachable or dies mid-request
is counted against its circuit and the same try moves on to the next node, so a node's death
costs the job nothing but time. When every node is full, a job that asked for `gpu` waits
(`gpu_wait_s`) for a slot; an `auto` job fails over to the next backend at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from time import perf_counter

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from relight.backends.attempts import BackendCall
from relight.backends.render_backend import BackendResult, JobInput
from relight.core.config import Settings
from relight.core.errors import BackendFailed
from relight.core.params import Backend, RelightParams
from relight.nodes import registry, slots
from relight.nodes.breaker import CircuitBreaker
from relight.nodes.client import FailureKind, NodeCallFailed, call_node
from relight.nodes.registry import NodeInfo

logger = logging.getLogger(__name__)

BACKEND = Backend.GPU
# How often a job waiting for a free slot looks again.
WAIT_POLL_S = 0.2
# A Redis outage leaves a job with the static nodes rather than stuck in client retries.
DISCOVERY_TIMEOUT_S = 2.0


class GpuDispatcher:
    """Runs requests on GPU nodes for one worker process."""

    def __init__(self, *, settings: Settings, redis: Redis, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.redis = redis
        self.http = http
        self.namespace = settings.gpu_namespace
        self.static = registry.static_nodes(settings.static_gpu_nodes)
        self.breaker = CircuitBreaker(
            redis,
            self.namespace,
            failures=settings.gpu_breaker_failures,
            cooldown_s=settings.gpu_breaker_cooldown_s,
        )
        self.worker_id = uuid.uuid4().hex[:12]

    async def nodes(self) -> list[NodeInfo]:
        """Every node known now: the static list, described by heartbeats where they beat."""
        live: list[NodeInfo] = []
        if self.settings.gpu_discovery:
            try:
                live = await asyncio.wait_for(
                    registry.live_nodes(self.redis, self.namespace), DISCOVERY_TIMEOUT_S
                )
            except (RedisError, OSError, TimeoutError):
                logger.warning("could not read GPU node heartbeats", exc_info=True)
        return registry.merge(self.static, live)

    async def available(self) -> bool:
        """Whether any node is configured or alive (full ones count: a job can wait)."""
        return bool(await self.nodes())

    async def serves_backgrounds(self) -> bool:
        """Whether some node relights onto backgrounds (a heartbeat says so, or a static node,
        which cannot say and is tried)."""
        return any(node.backgrounds or node.source == "static" for node in await self.nodes())

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: Callable[[float], None] | None = None,
    ) -> BackendResult:
        """Relight on a GPU node, recording each node call in `calls`.

        Takes a slot on the least-loaded node that may serve the request and calls it. A node
        that fails (unreachable, lost mid-request, 5xx) is left for the rest of this try and the
        next one is called; a busy one is passed over for now. When every node is busy, a job
        that named `gpu` (or a background job, which no other backend can run) waits up to
        `gpu_wait_s` for a slot, an `auto` job steps aside at once. Raises BackendFailed when no
        node serves it: `retryable` when a later try may succeed, `failover` when another backend
        may take it.
        """
        # A job that named `gpu` waits for a slot; so does a background job under `auto`, since
        # no other backend can run it.
        wait = job_input.backend_requested == BACKEND or params.background_source is not None
        deadline = time.monotonic() + (self.settings.gpu_wait_s if wait else 0.0)
        failed: set[str] = set()
        last: NodeCallFailed | None = None
        while True:
            result, failure = await self._call_free_nodes(
                failed, job_input, params, seed, calls, progress
            )
            if result is not None:
                return result
            last = failure or last
            if not await self._candidates(exclude=failed, params=params):
                # Nothing left that could ever take it now: none known, all failed or open.
                raise await self._no_node_left(job_input, params, last, wait=wait)
            if time.monotonic() >= deadline:
                raise BackendFailed(
                    "every GPU node is busy",
                    code="gpu_busy",
                    retryable=wait,
                    failover=True,
                    retry_after_s=1.0,
                )
            await asyncio.sleep(WAIT_POLL_S)

    async def _call_free_nodes(
        self,
        failed: set[str],
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: Callable[[float], None] | None,
    ) -> tuple[BackendResult | None, NodeCallFailed | None]:
        """One pass over the nodes with a free slot, until one renders: `(result, None)`, or
        `(None, the last node failure)` once no free slot is left. Nodes that fail join
        `failed`; busy ones are passed over for this pass only."""
        busy: set[str] = set()
        last: NodeCallFailed | None = None
        while True:
            candidates = await self._candidates(exclude=failed | busy, params=params)
            lease = await slots.acquire_least_loaded(
                self.redis,
                self.namespace,
                candidates,
                self.settings.gpu_slot_ttl_s,
                holder=f"{self.worker_id}:{job_input.job_id}:{uuid.uuid4().hex[:8]}",
            )
            if lease is None:
                return None, last
            try:
                return await self._call(lease, job_input, params, seed, calls, progress), None
            except NodeCallFailed as exc:
                if exc.kind is FailureKind.REJECTED:
                    raise BackendFailed(
                        f"the GPU node refused the request: {exc.message}",
                        code="upstream_rejected",
                        retryable=False,
                        failover=False,
                    ) from exc
                if exc.kind is FailureKind.TOO_LARGE:
                    # The same request would not fit the next node either (nodes are alike).
                    raise BackendFailed(
                        f"the request is too large for the GPU nodes: {exc.message}",
                        code="request_too_large",
                        retryable=False,
                        failover=False,
                    ) from exc
                last = exc
                (busy if exc.kind is FailureKind.BUSY else failed).add(lease.node.id)

    async def _candidates(
        self, exclude: set[str], params: RelightParams | None = None
    ) -> list[NodeInfo]:
        """Nodes that may take the request now: not excluded, circuit closed, and for a
        background request one that serves backgrounds (a static node without a heartbeat
        cannot say: it is tried, and one that refuses is left for this try)."""
        needs_backgrounds = params is not None and params.background_source is not None
        candidates = []
        for node in await self.nodes():
            if node.id in exclude:
                continue
            if needs_backgrounds and not node.backgrounds and node.source != "static":
                continue
            try:
                if not await self.breaker.allows(node.id):
                    continue
            except RedisError:
                logger.warning("circuit breaker unreadable; trying node %s", node.id)
            candidates.append(node)
        return candidates

    async def _no_node_left(
        self,
        job_input: JobInput,
        params: RelightParams,
        last: NodeCallFailed | None,
        *,
        wait: bool,
    ) -> BackendFailed:
        """Why no node can take the request now, as the failure routing acts on."""
        if params.background_source is not None and (
            not await self.serves_backgrounds()
            or (last is not None and last.kind is FailureKind.UNSUITED)
        ):
            return BackendFailed(
                "no GPU node relights onto backgrounds (none has the fbc model)",
                code="background_not_served",
                retryable=wait,
                failover=False,
            )
        nothing = not await self.nodes()
        named = job_input.backend_requested == BACKEND
        if nothing or last is None:
            message = "no GPU node is available" if nothing else "every GPU node's circuit is open"
            return BackendFailed(message, code="gpu_unavailable", retryable=named, failover=True)
        if last.kind is FailureKind.AUTH:
            logger.error("GPU nodes refused our token: check RELIGHT_NODE_TOKEN")
            return BackendFailed(
                "the GPU nodes refused the worker's credentials",
                code="upstream_auth",
                retryable=False,
                failover=True,
            )
        code = "upstream_unreachable" if last.kind is FailureKind.UNREACHABLE else "upstream_error"
        return BackendFailed(
            f"no GPU node could serve the request: {last.message}", code=code, retryable=True
        )

    async def _call(
        self,
        lease: slots.SlotLease,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: Callable[[float], None] | None,
    ) -> BackendResult:
        node = lease.node
        started_at = datetime.now(UTC).isoformat()
        started = perf_counter()

        def record(outcome: str, status: int | None = None, error: str | None = None) -> None:
            calls.append(
                BackendCall(
                    backend=BACKEND,
                    started_at=started_at,
                    latency_ms=round((perf_counter() - started) * 1000, 2),
                    outcome=outcome,
                    status_code=status,
                    error=error,
                    node=node.id,
                )
            )

        async with self._holding(lease):
            try:
                result, images = await call_node(
                    self.http,
                    node,
                    image=job_input.data,
                    params=params,
                    seed=seed,
                    token=self.settings.node_token,
                    progress=progress,
                    background=job_input.background,
                )
            except NodeCallFailed as exc:
                record(exc.kind.value, exc.status_code, exc.message)
                if exc.kind in (FailureKind.UNREACHABLE, FailureKind.LOST, FailureKind.FAILED):
                    await self._count_failure(node.id)
                logger.warning("GPU node %s: %s", node.id, exc.message)
                raise
        record("ok", 200)
        with contextlib.suppress(RedisError):
            await self.breaker.record_success(node.id)
        timings = {f"node_{name}": value for name, value in result.timings.items()}
        timings["node_ms"] = round((perf_counter() - started) * 1000, 2)
        return BackendResult(
            images=images, node=node.id, timings=timings, model_digest=result.model_digest
        )

    async def _count_failure(self, node_id: str) -> None:
        try:
            if await self.breaker.record_failure(node_id):
                logger.warning("circuit of GPU node %s is open", node_id)
        except RedisError:
            logger.warning("could not count a failure of GPU node %s", node_id, exc_info=True)

    @asynccontextmanager
    async def _holding(self, lease: slots.SlotLease) -> AsyncIterator[None]:
        """Keep the slot while the block runs (renewed at a third of its TTL), then free it."""
        ttl_s = self.settings.gpu_slot_ttl_s

        async def keep() -> None:
            while True:
                await asyncio.sleep(ttl_s / 3)
                try:
                    await slots.renew(self.redis, lease, ttl_s)
                except RedisError:
                    logger.warning("could not renew a slot on %s", lease.node.id, exc_info=True)

        keeper = asyncio.create_task(keep())
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            try:
                await asyncio.shield(slots.release(self.redis, lease))
            except RedisError:
                logger.warning("could not free a slot on %s; it expires", lease.node.id)
