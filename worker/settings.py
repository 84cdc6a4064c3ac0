"""Builds the arq worker from Relight's settings: startup wires the runner and its backends.

The backends built are the ones `available_backends` allows this deployment (the same rule
submit applies); this is the one place that hands the local backend an inference engine.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any

import httpx
from arq import cron, func
from arq.connections import ArqRedis, RedisSettings

from inference.engines.classic import ClassicEngine
from relight.backends.availability import available_backends
from relight.backends.local import LocalBackend
from relight.backends.render_backend import RenderBackend
from relight.backends.segmind import SegmindBackend

# Subscribes the batches to job events: a worker ends the batch whose last item it ends.
from relight.batches import on_job_event as _batches_subscribed  # noqa: F401
from relight.core import metrics
from relight.core.config import Settings
from relight.core.db import create_engine, create_sessionmaker
from relight.core.params import Backend
from relight.core.redis_url import open_redis, parse_sentinel_url
from relight.core.storage import open_storage
from relight.core.storage.urls import UrlBuilder
from relight.jobs.deadline_watch import DeadlineWatcher
from relight.jobs.execution import JobRunner
from relight.jobs.queue import (
    DELIVER_WEBHOOK_TASK,
    RUN_JOB_TASK,
    SWEEP_TASK,
    deserialize_job,
    redis_retry_options,
    serialize_job,
)
from relight.jobs.queue_counts import count_queue
from relight.nodes.dispatch import GpuDispatcher
from relight.nodes.gpu_backend import GpuBackend
from relight.nodes.slots import slots_in_use
from relight.webhooks.delivery import WebhookSender
from worker.metrics_server import MetricsServer
from worker.tasks import deliver_webhook, run_job, sweep
from worker.wakeup import WakeableWorker

logger = logging.getLogger(__name__)

USER_AGENT = "relight/0.1"


async def send_delivery(ctx: dict[str, Any], delivery_id: uuid.UUID) -> None:
    """Make the first attempt of a webhook delivery now (the deadline watcher's sends);
    a failed one is retried through the queue as `deliver_webhook` retries it."""
    await deliver_webhook(ctx, str(delivery_id))


async def start_metrics_server(ctx: dict[str, Any], settings: Settings) -> None:
    """Serve this worker's metrics on RELIGHT_WORKER_METRICS_PORT (0: off). A port already
    taken (another worker on this host) is logged, not fatal: jobs matter more than metrics."""
    if not settings.worker_metrics_port:
        return
    redis = ctx["redis"]

    async def before_scrape() -> None:
        await metrics.refresh_from_redis(
            partial(count_queue, redis, settings.queue_name),
            partial(slots_in_use, redis, settings.gpu_namespace),
        )

    server = MetricsServer(
        settings.worker_metrics_host, settings.worker_metrics_port, before_scrape
    )
    try:
        await server.start()
    except OSError as exc:
        logger.warning("worker metrics not served: %s", exc)
        return
    ctx["metrics_server"] = server


def build_backends(
    settings: Settings, ctx: dict[str, Any], executor: Executor
) -> dict[Backend, RenderBackend]:
    """The backends this deployment is configured for. GPU nodes may start beating at any time,
    so with discovery on the `gpu` backend is built even while none is live. Their HTTP clients
    go into `ctx`, for shutdown to close."""
    configured = available_backends(settings, live_gpu_nodes=True)
    backends: dict[Backend, RenderBackend] = {}
    if Backend.LOCAL in configured:
        backends[Backend.LOCAL] = LocalBackend(ClassicEngine(), executor)
    if Backend.SEGMIND in configured:
        # One pooled client for every Segmind call of this worker.
        ctx["segmind_http"] = httpx.AsyncClient(
            headers={"user-agent": USER_AGENT},
            limits=httpx.Limits(
                max_connections=settings.segmind_concurrency * settings.worker_concurrency
            ),
        )
        urls = UrlBuilder.background(settings)
        backends[Backend.SEGMIND] = SegmindBackend(ctx["segmind_http"], settings, urls)
    if Backend.GPU in configured:
        # Node calls hold a connection for the whole render, so no pool limit below the jobs
        # this worker runs at once; reads time out on a silent (dead) node.
        ctx["gpu_http"] = httpx.AsyncClient(
            headers={"user-agent": USER_AGENT},
            timeout=httpx.Timeout(
                settings.gpu_read_timeout_s, connect=settings.gpu_connect_timeout_s
            ),
            limits=httpx.Limits(max_connections=settings.worker_concurrency * 2),
        )
        dispatcher = GpuDispatcher(settings=settings, redis=ctx["redis"], http=ctx["gpu_http"])
        backends[Backend.GPU] = GpuBackend(dispatcher)
    return backends


async def startup(
    ctx: dict[str, Any],
    *,
    settings: Settings,
    extra_backends: Mapping[Backend, RenderBackend],
) -> None:
    """arq's on_startup: open the database, storage and HTTP clients, build the backends and
    the job runner, start the metrics server."""
    # A connection per job slot, one for the sweep and webhooks, one for the deadline watcher.
    engine = create_engine(settings, pool_size=settings.worker_concurrency + 2)
    executor = ThreadPoolExecutor(
        max_workers=settings.local_engine_threads, thread_name_prefix="relight-engine"
    )
    # Outbound requests to user URLs; egress_stream never follows redirects blindly.
    http = httpx.AsyncClient(headers={"user-agent": USER_AGENT})
    ctx.update(db_engine=engine, executor=executor, http=http)
    backends = build_backends(settings, ctx, executor)
    backends.update(extra_backends)
    sessionmaker = create_sessionmaker(engine)
    storage = open_storage(settings)
    ctx.update(
        settings=settings,
        storage=storage,
        sessionmaker=sessionmaker,
        runner=JobRunner(
            settings=settings,
            sessionmaker=sessionmaker,
            storage=storage,
            redis=ctx["redis"],
            enqueuer=ctx["redis"],
            http=http,
            backends=backends,
        ),
        webhooks=WebhookSender(
            settings=settings,
            sessionmaker=sessionmaker,
            http=http,
            urls=UrlBuilder.background(settings),
        ),
    )
    watcher = DeadlineWatcher(
        sessionmaker=sessionmaker,
        redis=ctx["redis"],
        queue_name=settings.queue_name,
        urls=UrlBuilder.background(settings),
        send=partial(send_delivery, ctx),
    )
    # Beside the jobs, not in one of their slots: a deadline fires while every slot renders.
    watcher.start()
    ctx["deadline_watcher"] = watcher
    await start_metrics_server(ctx, settings)
    logger.info(
        "worker ready on queue %s with backends %s",
        settings.queue_name,
        ", ".join(sorted(backends)) or "none",
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq's on_shutdown: close what startup opened (whatever it got to)."""
    if "deadline_watcher" in ctx:
        await ctx["deadline_watcher"].stop()
    if "metrics_server" in ctx:
        await ctx["metrics_server"].stop()
    for client in ("http", "segmind_http", "gpu_http"):
        if client in ctx:
            await ctx[client].aclose()
    if "executor" in ctx:
        ctx["executor"].shutdown(wait=True)
    if "db_engine" in ctx:
        await ctx["db_engine"].dispose()


def worker_options(settings: Settings) -> dict[str, Any]:
    """arq's Worker options for `settings`, but for on_startup."""
    return {
        "functions": [
            # The runner decides when a job is done trying (per backend, with failover); arq's
            # own cap only has to stay out of its way.
            func(
                run_job,
                name=RUN_JOB_TASK,
                max_tries=settings.job_max_attempts * (len(settings.failover_order) + 1) + 2,
                keep_result=0,
            ),
            # Attempts are scheduled by the task itself, never by arq's retry.
            func(deliver_webhook, name=DELIVER_WEBHOOK_TASK, max_tries=1, keep_result=0),
        ],
        "cron_jobs": [
            cron(
                sweep,
                # arq names cron runs per Redis database: one name per queue, or deployments
                # sharing a database would take each other's sweeps.
                name=f"{SWEEP_TASK}:{settings.queue_name}",
                second=set(range(0, 60, settings.webhook_sweep_interval_s)),
                run_at_startup=True,
                keep_result=0,
            )
        ],
        "queue_name": settings.queue_name,
        **redis_options(settings),
        "on_shutdown": shutdown,
        "max_jobs": settings.worker_concurrency,
        # GPU renders may take up to gpu_job_timeout_max_s (their timeout follows their size).
        "job_timeout": max(settings.job_timeout_s, settings.gpu_job_timeout_max_s) + 30,
        "poll_delay": settings.worker_poll_delay_s,
        "fair_dispatch": settings.fair_dispatch,
        "keep_result": 0,
        "job_serializer": serialize_job,
        "job_deserializer": deserialize_job,
        "health_check_interval": 60,
        "job_completion_wait": settings.shutdown_grace_s,
    }


def redis_options(settings: Settings) -> dict[str, Any]:
    """How the worker reaches Redis: arq's settings for one server; through Sentinel, a client
    of the primary it names, asked again after a failover (arq's own Sentinel support would
    drop the retry options)."""
    if parse_sentinel_url(settings.redis_url) is None:
        return {
            "redis_settings": replace(
                RedisSettings.from_dsn(settings.redis_url), **redis_retry_options()
            )
        }
    pool = open_redis(settings.redis_url, ArqRedis, **redis_retry_options())
    pool.job_serializer = serialize_job
    pool.job_deserializer = deserialize_job
    pool.default_queue_name = settings.queue_name
    return {"redis_pool": pool}


def build_worker(
    settings: Settings,
    *,
    backends: Mapping[Backend, RenderBackend] | None = None,
    **overrides: Any,
) -> WakeableWorker:
    """An arq Worker for `settings`; tests pass `burst=True`, `poll_delay=0` and the like.

    `backends` replace the configured ones by name: how benchmarks run the worker with a
    backend that does no work. Jobs reach one only where `available_backends` allows its name.
    """
    options = worker_options(settings)
    options["on_startup"] = partial(startup, settings=settings, extra_backends=dict(backends or {}))
    options.update(overrides)
    if options.get("burst"):
        # A burst worker stops at an empty queue; cron would keep a next run enqueued forever.
        options["cron_jobs"] = []
    return WakeableWorker(**options)
