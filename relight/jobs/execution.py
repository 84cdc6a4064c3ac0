"""Running one job: claim, load the subject, render on a backend, store, finish.

Every step is safe to repeat (arq runs a job at least once): the claim is a conditional
`queued → running`, output keys are deterministic, and the finishing UPDATE only applies to the
attempt that holds the job, so a job is charged, refunded and announced exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.config import Settings
from relight.credits.service import charge_credits, refund_credits
from relight.errors import BackendFailed, RelightError
from relight.fetch import fetch_image_bytes
from relight.images import decode_image
from relight.jobs import repository
from relight.jobs.backend import Backend, BackendResult, JobInput
from relight.jobs.events import publish_finished
from relight.jobs.queue import Enqueuer, enqueue_delivery
from relight.models import Job, JobOutput, JobStatus
from relight.params import Backend as BackendName
from relight.params import RelightParams
from relight.storage import Storage, StoredObjectMissing
from relight.webhooks import service as webhooks

logger = logging.getLogger(__name__)

# `auto` prefers our GPUs, then Segmind, then the CPU engine.
AUTO_ORDER = (BackendName.GPU, BackendName.SEGMIND, BackendName.LOCAL)
EXTENSIONS = {"image/webp": "webp", "image/jpeg": "jpg", "image/png": "png"}


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run: `retry_in_s` is set when the job went back to the queue."""

    status: JobStatus | None
    retry_in_s: float | None = None

    @property
    def skipped(self) -> bool:
        return self.status is None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


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
        backends: dict[BackendName, Backend],
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.storage = storage
        self.redis = redis
        self.enqueuer = enqueuer
        self.http = http
        self.backends = backends

    async def run(self, job_id: uuid.UUID) -> RunOutcome:
        started = perf_counter()
        async with self.sessionmaker() as session, session.begin():
            job = await repository.claim(session, job_id, self.settings.lease_s)
            start_delivery = None
            if job is not None and job.attempts == 1:
                start_delivery = await webhooks.schedule_delivery(session, job, webhooks.START)
        if job is None:
            logger.info("job %s is not queued; nothing to do", job_id)
            return RunOutcome(status=None)
        await self._enqueue_deliveries([start_delivery])
        assert job.started_at is not None
        timings: dict[str, float] = {
            "queue_wait_ms": _ms((datetime.now(UTC) - job.created_at).total_seconds())
        }
        try:
            job_input = await self._load_input(job, timings)
            backend = self._select_backend(job)
            params = RelightParams(**job.params, seed=job.seed)
            engine_started = perf_counter()
            result = await asyncio.wait_for(
                backend.render(job_input, params, job.seed),
                timeout=self.settings.job_timeout_s,
            )
            timings["backend_ms"] = _ms(perf_counter() - engine_started)
            timings.update(result.timings)
            outputs = await self._store_outputs(job, result, timings)
            timings["total_ms"] = _ms(perf_counter() - started)
            return await self._succeed(job, backend.name, result, outputs, timings)
        except asyncio.CancelledError:
            # The worker is shutting down: hand the job back rather than leave it `running`.
            await asyncio.shield(self._hand_back(job))
            raise
        except TimeoutError:
            timeout = BackendFailed(
                f"the backend did not finish within {self.settings.job_timeout_s:g} s",
                code="backend_timeout",
                retryable=True,
            )
            return await self._fail_or_retry(job, timeout, timings)
        except RelightError as exc:
            return await self._fail_or_retry(job, exc, timings)
        except Exception as exc:
            logger.exception("job %s crashed on attempt %d", job.id, job.attempts)
            crash = RelightError(
                f"internal error while processing the request ({exc.__class__.__name__})",
                status_code=500,
                code="internal_error",
            )
            crash.retryable = True
            return await self._fail_or_retry(job, crash, timings)

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
        except Exception:
            logger.exception("could not hand job %s back; its lease will expire", job.id)

    async def _load_input(self, job: Job, timings: dict[str, float]) -> JobInput:
        started = perf_counter()
        if job.input_storage_key is not None:
            try:
                data = await self.storage.get(job.input_storage_key)
            except StoredObjectMissing as exc:
                raise RelightError(
                    "the stored subject image is gone", status_code=500, code="input_missing"
                ) from exc
        else:
            assert job.input_url is not None
            data = await fetch_image_bytes(
                self.http,
                job.input_url,
                policy=self.settings.egress_policy,
                max_bytes=self.settings.max_input_bytes,
                timeout_s=self.settings.fetch_timeout_s,
            )
        fetched = perf_counter()
        timings["fetch_ms"] = _ms(fetched - started)
        image = await asyncio.to_thread(
            decode_image,
            data,
            max_bytes=self.settings.max_input_bytes,
            max_pixels=self.settings.max_input_pixels,
        )
        timings["decode_ms"] = _ms(perf_counter() - fetched)
        return JobInput(data=data, url=job.input_url, image=image)

    def _select_backend(self, job: Job) -> Backend:
        requested = BackendName(job.backend_requested)
        candidates = AUTO_ORDER if requested is BackendName.AUTO else (requested,)
        for name in candidates:
            backend = self.backends.get(name)
            if backend is not None:
                return backend
        raise BackendFailed(
            f"no worker backend can serve {requested.value!r}",
            code="backend_unavailable",
            retryable=False,
        )

    async def _store_outputs(
        self, job: Job, result: BackendResult, timings: dict[str, float]
    ) -> list[JobOutput]:
        started = perf_counter()
        outputs = []
        for index, image in enumerate(result.images):
            extension = EXTENSIONS.get(image.content_type, "bin")
            key = f"outputs/{job.tenant_id}/{job.id}/{index}.{extension}"
            await self.storage.put(key, image.data)
            outputs.append(
                JobOutput(
                    job_id=job.id,
                    index=index,
                    storage_key=key,
                    content_type=image.content_type,
                    width=image.width,
                    height=image.height,
                    bytes=len(image.data),
                    sha256=hashlib.sha256(image.data).hexdigest(),
                    seed=image.seed,
                )
            )
        timings["store_ms"] = _ms(perf_counter() - started)
        return outputs

    async def _succeed(
        self,
        job: Job,
        backend_name: str,
        result: BackendResult,
        outputs: list[JobOutput],
        timings: dict[str, float],
    ) -> RunOutcome:
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
                    "lease_expires_at": None,
                    "error_code": None,
                    "error_message": None,
                },
            )
            if done is None:
                logger.warning("job %s was taken back before it finished; dropping result", job.id)
                return RunOutcome(status=None)
            repository.add_outputs(session, outputs)
            await charge_credits(
                session,
                job.tenant_id,
                job.id,
                reserved=job.credits_reserved,
                cost=job.credits_reserved,
            )
            delivery = await webhooks.schedule_delivery(session, done, webhooks.COMPLETED)
        await self._announce_finished(job.id, delivery)
        logger.info("job %s succeeded on %s in %.0f ms", job.id, backend_name, timings["total_ms"])
        return RunOutcome(status=JobStatus.SUCCEEDED)

    async def _fail_or_retry(
        self, job: Job, error: RelightError, timings: dict[str, float]
    ) -> RunOutcome:
        retry = error.retryable and job.attempts < self.settings.job_max_attempts
        values: dict[str, Any] = {
            "error_code": error.code,
            "error_message": error.message,
            "timings": timings,
            "lease_expires_at": None,
        }
        if retry:
            values["status"] = JobStatus.QUEUED.value
        else:
            values |= {
                "status": JobStatus.FAILED.value,
                "finished_at": datetime.now(UTC),
                "credits_charged": 0,
            }
        async with self.sessionmaker() as session, session.begin():
            moved = await repository.transition(
                session, job.id, from_status=JobStatus.RUNNING, attempt=job.attempts, values=values
            )
            if moved is None:
                return RunOutcome(status=None)
            delivery = None
            if not retry:
                await refund_credits(
                    session, job.tenant_id, job.id, job.credits_reserved, reason=error.code
                )
                delivery = await webhooks.schedule_delivery(session, moved, webhooks.COMPLETED)
        if retry:
            delay = self.settings.retry_backoff_s * 2 ** (job.attempts - 1)
            logger.warning(
                "job %s attempt %d failed (%s: %s); retrying in %.1f s",
                job.id,
                job.attempts,
                error.code,
                error.message,
                delay,
            )
            return RunOutcome(status=JobStatus.QUEUED, retry_in_s=delay)
        await self._announce_finished(job.id, delivery)
        logger.info("job %s failed: %s: %s", job.id, error.code, error.message)
        return RunOutcome(status=JobStatus.FAILED)
