"""Running one job: claim, load the subject, render on a backend, store, finish.

Every step is safe to repeat (arq runs a job at least once): the claim is a conditional
`queued → running`, output keys are deterministic, and the finishing step only applies to the
attempt that holds the job, so a job is charged, refunded and announced exactly once. The steps
themselves (each status change, and what it charges, refunds and announces) are
`relight.jobs.lifecycle`'s; this module decides which to take.

A job canceled while it runs (the api moves it `running → canceled` and refunds it) is watched
for during the render and the render abandoned at its next safe point
(`relight.jobs.cancel_watch`). Nothing is stored for it; if the render finished first, the
guarded `running → succeeded` update finds the job gone and the stored outputs are deleted
again. Loading the subject and storing outputs live in `relight.jobs.job_images`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from time import perf_counter
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.backends import routing
from relight.backends.attempts import Attempt, BackendCall, read_attempts
from relight.backends.availability import available_to_run
from relight.backends.render_backend import BackendResult, JobInput, RenderBackend
from relight.core import metrics
from relight.core.config import Settings
from relight.core.errors import BackendFailed, RelightError
from relight.core.logs import request_context
from relight.core.models import Job, JobOutput, JobStatus
from relight.core.params import Backend, RelightParams
from relight.core.storage import Storage
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import unit_of_work
from relight.jobs import lifecycle, repository
from relight.jobs.cancel_watch import (
    RenderAbandoned,
    render_until_released,
    watch_until_released,
)
from relight.jobs.events import finished_channel
from relight.jobs.job_images import delete_outputs, elapsed_ms, load_input, store_outputs
from relight.jobs.lifecycle import Moved
from relight.jobs.progress import track_progress
from relight.jobs.queue import Enqueuer
from relight.nodes.render_time import gpu_render_timeout_s

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run (`status` None: nothing to do, or the job left this attempt);
    `retry_in_s` is set when the job went back to the queue."""

    status: JobStatus | None
    retry_in_s: float | None = None


# Failures that count as `timeout` (rather than `error`) in relight_backend_duration_seconds.
TIMEOUT_CODES = frozenset({"backend_timeout", "upstream_timeout"})


class JobRunner:
    """Runs one job for the worker (`run(job_id)`), at least once and with effect once.

    Claims it through `relight.jobs.lifecycle`, loads its images, picks a backend
    (`relight.backends.routing`) among those available and allowed for the tenant, renders
    while keeping the attempt's lease and watching for a cancel, stores the outputs, and ends
    the attempt through the lifecycle (succeed, retry, fail or hand back), announcing it after
    the commit. `RunOutcome.retry_in_s` tells the worker when to run it again.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: Storage,
        redis: Redis,
        enqueuer: Enqueuer,
        http: httpx.AsyncClient,
        backends: dict[Backend, RenderBackend],
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.storage = storage
        self.redis = redis
        self.enqueuer = enqueuer
        self.http = http
        self.backends = backends
        self.urls = UrlBuilder.background(settings)

    async def run(self, job_id: uuid.UUID) -> RunOutcome:
        """Run the job if it is queued; a job already taken, finished or canceled is skipped
        (`RunOutcome.status` None)."""
        started = perf_counter()
        async with unit_of_work(self.sessionmaker) as uow:
            session = uow.session
            claimed = await lifecycle.claim(session, job_id, self.settings.lease_s, self.urls)
            allowed: list[str] = []
            if claimed is not None:
                allowed = await repository.allowed_backends(session, claimed.job.tenant_id)
                uow.after_commit(partial(self._announce_claim, claimed))
            else:
                # Rare (a repeated run): one more read, so that this line carries the request id.
                request_id = await repository.http_request_id_of(session, job_id)
        if claimed is None:
            with request_context(request_id):
                logger.info("job %s is not queued; nothing to do", job_id)
            return RunOutcome(status=None)
        job = claimed.job
        if claimed.finished:
            # Its deadline passed while it waited: canceled (and refunded) instead of started.
            with request_context(job.http_request_id):
                logger.info("job %s waited past its deadline; canceled, not started", job_id)
            return RunOutcome(status=job.job_status)
        if job.attempts == 1:
            metrics.QUEUE_WAIT.observe((datetime.now(UTC) - job.created_at).total_seconds())
        # From here on every line (and the lease keeper's) carries the submit's request id.
        with request_context(job.http_request_id):
            keeper = asyncio.create_task(self._keep_lease(job))
            try:
                return await self._process(job, allowed, started)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper

    async def _announce_claim(self, claimed: Moved) -> None:
        with request_context(claimed.job.http_request_id):
            await self._announce(claimed)

    async def _keep_lease(self, job: Job) -> None:
        """Renew the running attempt's lease, so the sweeper never takes a live job back."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                async with unit_of_work(self.sessionmaker) as uow:
                    await repository.renew_lease(
                        uow.session, job.id, job.attempts, self.settings.lease_s
                    )
            except Exception:
                logger.warning("could not renew the lease of job %s", job.id, exc_info=True)

    async def _process(self, job: Job, allowed: list[str], started: float) -> RunOutcome:
        timings: dict[str, float] = {
            "queue_wait_ms": elapsed_ms((datetime.now(UTC) - job.created_at).total_seconds())
        }
        try:
            job_input = await load_input(
                job, storage=self.storage, http=self.http, settings=self.settings, timings=timings
            )
        except asyncio.CancelledError:
            await asyncio.shield(self._hand_back(job))
            raise
        except RelightError as exc:
            return await self._after_failed_attempt(job, exc, timings)
        requested = Backend(job.backend_requested)
        backgrounds = job.params.get("background_source") is not None
        choices = routing.candidates(
            requested,
            allowed,
            self.settings.failover_order,
            await available_to_run(
                self.settings, self.backends, requested=requested, backgrounds=backgrounds
            ),
        )
        log = read_attempts(job.backend_calls)
        name = routing.choose(choices, log, self.settings.job_max_attempts)
        if name is None:
            what = "relight onto a background" if backgrounds else "serve"
            unavailable = BackendFailed(
                f"no backend can {what} {job.backend_requested!r} for this account",
                code="background_not_served" if backgrounds else "backend_unavailable",
                retryable=False,
            )
            return await self._after_failed_attempt(job, unavailable, timings)
        return await self._render(job, name, choices, job_input, timings, started)

    async def _render(
        self,
        job: Job,
        name: Backend,
        choices: list[Backend],
        job_input: JobInput,
        timings: dict[str, float],
        started: float,
    ) -> RunOutcome:
        backend = self.backends[name]
        params = RelightParams(**job.params, seed=job.seed)
        calls: list[BackendCall] = []
        engine_started = perf_counter()
        try:
            rendered = await self._render_while_held(job, backend, params, job_input, calls)
        except asyncio.CancelledError:
            # The worker is shutting down: hand the job back rather than leave it `running`.
            await asyncio.shield(self._hand_back(job))
            raise
        except Exception as exc:
            failure = self._as_failure(job, exc)
        else:
            if rendered is None:
                # Canceled (or, rarely, taken back by the sweeper): whoever moved it settled it.
                logger.info("job %s left this attempt while it ran; render abandoned", job.id)
                return RunOutcome(status=None)
            return await self._store_and_succeed(
                job, name, rendered, calls, timings, started, engine_started
            )
        outcome = "timeout" if failure.code in TIMEOUT_CODES else "error"
        metrics.BACKEND_DURATION.labels(backend=name.value, outcome=outcome).observe(
            perf_counter() - engine_started
        )
        entry = Attempt.record(job.attempts, name, failure, calls)
        return await self._after_failed_attempt(job, failure, timings, entry, choices)

    async def _render_while_held(
        self,
        job: Job,
        backend: RenderBackend,
        params: RelightParams,
        job_input: JobInput,
        calls: list[BackendCall],
    ) -> BackendResult | None:
        """The backend's result, or None when the job left this attempt (canceled, taken back)
        while it rendered: the render is then abandoned at its next safe point."""
        abandoned = threading.Event()
        async with track_progress(self.sessionmaker, job, written=self._announce) as progress:

            def report(fraction: float) -> None:
                # Called between the engine's stages (or a node's steps): a safe point.
                if abandoned.is_set():
                    raise RenderAbandoned
                progress(fraction)

            return await render_until_released(
                asyncio.wait_for(
                    backend.render(job_input, params, job.seed, calls, report),
                    timeout=self._render_timeout_s(backend, params),
                ),
                # A cancel, and a deadline (fired by the worker's deadline watcher), end the
                # job's `running`; the render is then abandoned at its next safe point.
                watch_until_released(
                    self.redis,
                    finished_channel(self.settings.queue_name),
                    str(job.id),
                    partial(self._still_holds, job),
                ),
                abandoned,
            )

    def _render_timeout_s(self, backend: RenderBackend, params: RelightParams) -> float:
        """`job_timeout_s`, or for a GPU node a timeout that grows with the request's size."""
        if backend.name is not Backend.GPU:
            return self.settings.job_timeout_s
        return gpu_render_timeout_s(
            params,
            floor_s=self.settings.job_timeout_s,
            ceiling_s=self.settings.gpu_job_timeout_max_s,
        )

    def _as_failure(self, job: Job, exc: Exception) -> BackendFailed:
        """A render's exception as the failure it counts as (a crash is retried)."""
        if isinstance(exc, BackendFailed):
            return exc
        if isinstance(exc, TimeoutError):
            return BackendFailed(
                "the backend did not finish in time",
                code="backend_timeout",
                retryable=True,
            )
        logger.exception("job %s crashed on attempt %d", job.id, job.attempts)
        return BackendFailed(
            f"internal error while processing the request ({exc.__class__.__name__})",
            code="internal_error",
            retryable=True,
        )

    async def _still_holds(self, job: Job) -> bool:
        try:
            async with self.sessionmaker() as session:
                return await repository.holds(session, job.id, job.attempts)
        except Exception:
            logger.warning("could not check whether job %s was canceled", job.id, exc_info=True)
            return True

    async def _announce(self, *moves: Moved | None) -> None:
        """After the commit that made `moves` (an after-commit callback of the step's unit of
        work): wake the job's waiters and followers, queue its webhooks
        (`lifecycle.announce`)."""
        await lifecycle.announce(
            self.redis, self.settings.queue_name, *moves, enqueuer=self.enqueuer
        )

    async def _hand_back(self, job: Job) -> None:
        """Return an interrupted job to the queue; the interrupted attempt does not count."""
        try:
            async with unit_of_work(self.sessionmaker) as uow:
                moved = await lifecycle.hand_back(uow.session, job)
                uow.after_commit(partial(self._announce, moved))
            logger.warning("job %s handed back to the queue (worker stopping)", job.id)
        except Exception:
            logger.exception("could not hand job %s back; its lease will expire", job.id)

    async def _store_and_succeed(
        self,
        job: Job,
        name: Backend,
        result: BackendResult,
        calls: list[BackendCall],
        timings: dict[str, float],
        started: float,
        engine_started: float,
    ) -> RunOutcome:
        metrics.BACKEND_DURATION.labels(backend=name.value, outcome="success").observe(
            perf_counter() - engine_started
        )
        timings["backend_ms"] = elapsed_ms(perf_counter() - engine_started)
        timings.update(result.timings)
        entry = Attempt.record(job.attempts, name, None, calls)
        try:
            outputs = await store_outputs(self.storage, job, result, timings)
        except asyncio.CancelledError:
            await asyncio.shield(self._hand_back(job))
            raise
        timings["total_ms"] = elapsed_ms(perf_counter() - started)
        return await self._succeed(job, name, result, outputs, timings, entry)

    async def _succeed(
        self,
        job: Job,
        backend_name: Backend,
        result: BackendResult,
        outputs: list[JobOutput],
        timings: dict[str, float],
        entry: Attempt,
    ) -> RunOutcome:
        canceled = False
        async with unit_of_work(self.sessionmaker) as uow:
            session = uow.session
            done = await lifecycle.succeed(
                session,
                job,
                backend_name=backend_name,
                node=result.node,
                model_digest=result.model_digest,
                outputs=outputs,
                timings=timings,
                backend_calls=[*job.backend_calls, entry.to_json()],
                urls=self.urls,
            )
            if done is None:
                now = await repository.get_job_by_id(session, job.id)
                canceled = now is not None and now.job_status is JobStatus.CANCELED
            else:
                uow.after_commit(partial(self._announce, done))
        if done is None:
            logger.warning(
                "job %s was canceled or taken back before it finished; dropping result", job.id
            )
            if canceled:
                # Not when taken back: another attempt may have stored the same keys since.
                await delete_outputs(self.storage, outputs)
            return RunOutcome(status=None)
        logger.info("job %s succeeded on %s in %.0f ms", job.id, backend_name, timings["total_ms"])
        return RunOutcome(status=JobStatus.SUCCEEDED)

    async def _after_failed_attempt(
        self,
        job: Job,
        error: RelightError,
        timings: dict[str, float],
        entry: Attempt | None = None,
        choices: list[Backend] | None = None,
    ) -> RunOutcome:
        """Route a failed attempt (`routing.after_failure`): put the job back in the queue (same
        backend later, or the next one now), or end it `failed` with a refund; then announce,
        count and log the step taken."""
        log = list(job.backend_calls)
        if entry is not None:
            log.append(entry.to_json())
        step = routing.after_failure(
            error,
            attempts=job.attempts,
            failed=entry,
            choices=choices or [],
            log=read_attempts(log),
            max_tries=self.settings.job_max_attempts,
            backoff_s=self.settings.retry_backoff_s,
        )
        moved = await self._commit_retry_or_failure(job, step, error.message, timings, log)
        if moved is None:
            return RunOutcome(status=None)
        if not step.retry:
            logger.info("job %s failed: %s: %s", job.id, step.code, error.message)
            return RunOutcome(status=JobStatus.FAILED)
        retried_on = entry.backend.value if entry is not None else "none"
        metrics.JOB_RETRIES.labels(backend=retried_on).inc()
        logger.warning(
            "job %s attempt %d failed (%s: %s); retrying in %.1f s",
            job.id,
            job.attempts,
            error.code,
            error.message,
            step.delay_s,
        )
        return RunOutcome(status=JobStatus.QUEUED, retry_in_s=step.delay_s)

    async def _commit_retry_or_failure(
        self,
        job: Job,
        step: routing.NextStep,
        message: str,
        timings: dict[str, float],
        log: list[dict[str, Any]],
    ) -> Moved | None:
        """Commit the step decided for a failed attempt: back to the queue (`lifecycle.retry`)
        or failed (`lifecycle.fail`), with the attempt log `log`; the move is announced once
        it commits."""
        async with unit_of_work(self.sessionmaker) as uow:
            if step.retry:
                moved = await lifecycle.retry(
                    uow.session,
                    job,
                    code=step.code,
                    message=message,
                    timings=timings,
                    backend_calls=log,
                )
            else:
                moved = await lifecycle.fail(
                    uow.session,
                    job,
                    step.code,
                    message,
                    self.urls,
                    timings=timings,
                    backend_calls=log,
                )
            uow.after_commit(partial(self._announce, moved))
        return moved
