"""Running one job: claim, load the subject, render on a backend, store, finish.

Every step is safe to repeat (arq runs a job at least once): the claim is a conditional
`queued → running`, output keys are deterministic, and the finishing UPDATE only applies to the
attempt that holds the job, so a job is charged, refunded and announced exactly once.

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

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight import metrics
from relight.backends import routing
from relight.backends.attempts import Attempt, BackendCall, read_attempts
from relight.backends.availability import available_to_run
from relight.backends.protocol import BackendResult, JobInput, RenderBackend
from relight.config import Settings
from relight.credits.service import charge_credits
from relight.errors import BackendFailed, RelightError
from relight.jobs import repository
from relight.jobs.cancel_watch import RenderAbandoned, render_until_released, watch_until_released
from relight.jobs.events import Change, finished_channel, publish_changed, publish_finished
from relight.jobs.job_images import delete_outputs, elapsed_ms, load_input, store_outputs
from relight.jobs.progress import track_progress
from relight.jobs.queue import Enqueuer, enqueue_delivery
from relight.jobs.service import fail_running_job
from relight.jobs.views import UrlBuilder
from relight.logs import request_context
from relight.models import Job, JobOutput, JobStatus
from relight.params import BackendName, RelightParams
from relight.storage import Storage
from relight.webhooks import service as webhooks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run: `retry_in_s` is set when the job went back to the queue."""

    status: JobStatus | None
    retry_in_s: float | None = None

    @property
    def skipped(self) -> bool:
        return self.status is None


# Failures that count as `timeout` (rather than `error`) in relight_backend_duration_seconds.
TIMEOUT_CODES = frozenset({"backend_timeout", "upstream_timeout"})


class JobRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: Storage,
        redis: Redis,
        enqueuer: Enqueuer,
        http: httpx.AsyncClient,
        backends: dict[BackendName, RenderBackend],
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
        started = perf_counter()
        async with self.sessionmaker() as session, session.begin():
            job = await repository.claim(session, job_id, self.settings.lease_s)
            start_delivery = None
            allowed: list[str] = []
            if job is not None:
                allowed = await repository.allowed_backends(session, job.tenant_id)
                if job.attempts == 1:
                    start_delivery = await webhooks.schedule_delivery(
                        session, job, webhooks.START, self.urls
                    )
            else:
                # Rare (a repeated run): one more read, so that this line carries the request id.
                request_id = await repository.http_request_id_of(session, job_id)
        if job is None:
            with request_context(request_id):
                logger.info("job %s is not queued; nothing to do", job_id)
            return RunOutcome(status=None)
        if job.attempts == 1:
            metrics.QUEUE_WAIT.observe((datetime.now(UTC) - job.created_at).total_seconds())
        await self._announce_change(job.id, "status")
        # From here on every line (and the lease keeper's) carries the submit's request id.
        with request_context(job.http_request_id):
            await self._enqueue_deliveries([start_delivery])
            keeper = asyncio.create_task(self._keep_lease(job))
            try:
                return await self._process(job, allowed, started)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper

    async def _keep_lease(self, job: Job) -> None:
        """Renew the running attempt's lease, so the sweeper never takes a live job back."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                async with self.sessionmaker() as session, session.begin():
                    await repository.renew_lease(
                        session, job.id, job.attempts, self.settings.lease_s
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
            return await self._fail_or_retry(job, exc, timings)
        requested = BackendName(job.backend_requested)
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
            return await self._fail_or_retry(job, unavailable, timings)
        return await self._render(job, name, choices, job_input, timings, started)

    async def _render(
        self,
        job: Job,
        name: BackendName,
        choices: list[BackendName],
        job_input: JobInput,
        timings: dict[str, float],
        started: float,
    ) -> RunOutcome:
        backend = self.backends[name]
        params = RelightParams(**job.params, seed=job.seed)
        calls: list[BackendCall] = []
        engine_started = perf_counter()
        abandoned = threading.Event()
        try:
            async with track_progress(
                self.sessionmaker, job, written=partial(self._announce_change, job.id, "progress")
            ) as progress:

                def report(fraction: float) -> None:
                    # Called between the engine's stages (or a node's steps): a safe point.
                    if abandoned.is_set():
                        raise RenderAbandoned
                    progress(fraction)

                rendered = await render_until_released(
                    asyncio.wait_for(
                        backend.render(job_input, params, job.seed, calls, report),
                        timeout=self.settings.job_timeout_s,
                    ),
                    watch_until_released(
                        self.redis,
                        finished_channel(self.settings.queue_name),
                        str(job.id),
                        partial(self._still_holds, job),
                    ),
                    abandoned,
                )
            if rendered is None:
                # Canceled (or, rarely, taken back by the sweeper): whoever moved it settled it.
                logger.info("job %s left this attempt while it ran; render abandoned", job.id)
                return RunOutcome(status=None)
            result = rendered
        except asyncio.CancelledError:
            # The worker is shutting down: hand the job back rather than leave it `running`.
            await asyncio.shield(self._hand_back(job))
            raise
        except BackendFailed as exc:
            failure = exc
        except TimeoutError:
            failure = BackendFailed(
                f"the backend did not finish within {self.settings.job_timeout_s:g} s",
                code="backend_timeout",
                retryable=True,
            )
        except Exception as exc:
            logger.exception("job %s crashed on attempt %d", job.id, job.attempts)
            failure = BackendFailed(
                f"internal error while processing the request ({exc.__class__.__name__})",
                code="internal_error",
                retryable=True,
            )
        else:
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
        outcome = "timeout" if failure.code in TIMEOUT_CODES else "error"
        metrics.BACKEND_DURATION.labels(backend=name.value, outcome=outcome).observe(
            perf_counter() - engine_started
        )
        entry = Attempt.record(job.attempts, name, failure, calls)
        return await self._fail_or_retry(job, failure, timings, entry, choices)

    async def _still_holds(self, job: Job) -> bool:
        try:
            async with self.sessionmaker() as session:
                return await repository.holds(session, job.id, job.attempts)
        except Exception:
            logger.warning("could not check whether job %s was canceled", job.id, exc_info=True)
            return True

    async def _announce_change(self, job_id: uuid.UUID, change: Change) -> None:
        """After a commit that moved a job that is not finished: wake its status streams."""
        await publish_changed(self.redis, self.settings.queue_name, job_id, change)

    async def _announce_finished(self, job_id: uuid.UUID, delivery: uuid.UUID | None) -> None:
        """After the terminal commit: wake synchronous waiters, queue the webhook."""
        await publish_finished(self.redis, self.settings.queue_name, job_id)
        await self._enqueue_deliveries([delivery])

    async def _enqueue_deliveries(self, deliveries: list[uuid.UUID | None]) -> None:
        for delivery_id in deliveries:
            if delivery_id is None:
                continue
            try:
                await enqueue_delivery(self.enqueuer, self.settings.queue_name, delivery_id, 1)
            except (RedisError, OSError):
                # The row is committed: the sweeper sends it when Redis is back.
                logger.warning("could not queue webhook delivery %s", delivery_id, exc_info=True)

    async def _hand_back(self, job: Job) -> None:
        """Return an interrupted job to the queue; the interrupted attempt does not count."""
        try:
            async with self.sessionmaker() as session, session.begin():
                await repository.transition(
                    session,
                    job.id,
                    from_status=JobStatus.RUNNING,
                    attempt=job.attempts,
                    values={
                        "status": JobStatus.QUEUED.value,
                        "attempts": job.attempts - 1,
                        "lease_expires_at": None,
                    },
                )
            logger.warning("job %s handed back to the queue (worker stopping)", job.id)
            await self._announce_change(job.id, "status")
        except Exception:
            logger.exception("could not hand job %s back; its lease will expire", job.id)

    async def _succeed(
        self,
        job: Job,
        backend_name: BackendName,
        result: BackendResult,
        outputs: list[JobOutput],
        timings: dict[str, float],
        entry: Attempt,
    ) -> RunOutcome:
        delivery = None
        canceled = False
        async with self.sessionmaker() as session, session.begin():
            done = await repository.transition(
                session,
                job.id,
                from_status=JobStatus.RUNNING,
                attempt=job.attempts,
                values={
                    "status": JobStatus.SUCCEEDED.value,
                    "finished_at": datetime.now(UTC),
                    "credits_charged": job.credits_reserved,
                    "backend_used": backend_name,
                    "node": result.node,
                    "progress": 1.0,
                    "timings": timings,
                    "backend_calls": [*job.backend_calls, entry.to_json()],
                    "lease_expires_at": None,
                    "error_code": None,
                    "error_message": None,
                },
            )
            if done is None:
                now = await repository.get_job_by_id(session, job.id)
                canceled = now is not None and now.job_status is JobStatus.CANCELED
            else:
                repository.add_outputs(session, outputs)
                await charge_credits(
                    session,
                    job.tenant_id,
                    job.id,
                    reserved=job.credits_reserved,
                    cost=job.credits_reserved,
                )
                delivery = await webhooks.schedule_delivery(
                    session, done, webhooks.COMPLETED, self.urls
                )
        if done is None:
            logger.warning(
                "job %s was canceled or taken back before it finished; dropping result", job.id
            )
            if canceled:
                # Not when taken back: another attempt may have stored the same keys since.
                await delete_outputs(self.storage, outputs)
            return RunOutcome(status=None)
        await self._announce_finished(job.id, delivery)
        logger.info("job %s succeeded on %s in %.0f ms", job.id, backend_name, timings["total_ms"])
        return RunOutcome(status=JobStatus.SUCCEEDED)

    async def _fail_or_retry(
        self,
        job: Job,
        error: RelightError,
        timings: dict[str, float],
        entry: Attempt | None = None,
        choices: list[BackendName] | None = None,
    ) -> RunOutcome:
        """Put the job back in the queue (same backend later, or the next one now), or end it
        `failed` with a refund."""
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
        retry, delay, code = step.retry, step.delay_s, step.code
        failed = None
        async with self.sessionmaker() as session, session.begin():
            if retry:
                moved = await repository.transition(
                    session,
                    job.id,
                    from_status=JobStatus.RUNNING,
                    attempt=job.attempts,
                    values={
                        "status": JobStatus.QUEUED.value,
                        "error_code": code,
                        "error_message": error.message,
                        "timings": timings,
                        "backend_calls": log,
                        "lease_expires_at": None,
                    },
                )
                if moved is None:
                    return RunOutcome(status=None)
            else:
                failed = await fail_running_job(
                    session,
                    job,
                    code,
                    error.message,
                    self.urls,
                    timings=timings,
                    backend_calls=log,
                )
                if failed is None:
                    return RunOutcome(status=None)
        if retry:
            await self._announce_change(job.id, "status")
            retried_on = entry.backend.value if entry is not None else "none"
            metrics.JOB_RETRIES.labels(backend=retried_on).inc()
            logger.warning(
                "job %s attempt %d failed (%s: %s); retrying in %.1f s",
                job.id,
                job.attempts,
                error.code,
                error.message,
                delay,
            )
            return RunOutcome(status=JobStatus.QUEUED, retry_in_s=delay)
        assert failed is not None
        await self._announce_finished(job.id, failed.delivery)
        logger.info("job %s failed: %s: %s", job.id, code, error.message)
        return RunOutcome(status=JobStatus.FAILED)
