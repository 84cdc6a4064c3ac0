"""Sending one webhook attempt: sign the body stored with the event, POST it through the egress
checks, record the outcome."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from time import perf_counter

import httpx
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core import metrics
from relight.core.backoff import parse_retry_after
from relight.core.config import Settings
from relight.core.egress import EgressRefused, egress_stream
from relight.core.errors import RelightError
from relight.core.logs import job_context
from relight.core.models import WebhookDelivery
from relight.core.storage.urls import UrlBuilder
from relight.core.text import storable_text
from relight.core.unit_of_work import unit_of_work
from relight.jobs import repository as jobs
from relight.webhooks import service
from relight.webhooks.schemas import message_id
from relight.webhooks.signatures import signature_header

logger = logging.getLogger(__name__)

RESPONSE_EXCERPT_BYTES = 2048
USER_AGENT = "relight-webhooks/0.1 (+https://www.standardwebhooks.com)"


def attempt_outcome(outcome: service.AttemptOutcome) -> str:
    """The `outcome` label of relight_webhook_attempts_total."""
    if outcome.delivered:
        return "delivered"
    if outcome.gone:
        return "gone"
    return "rejected" if outcome.status_code is not None else "unreachable"


class WebhookSender:
    """Sends webhook deliveries, one attempt per `deliver` call.

    Each attempt claims the delivery row (so two workers never send it together), signs the
    body stored with the event with every secret in use (`relight.webhooks.signatures`, the
    Standard Webhooks scheme), POSTs it through the SSRF-safe egress within
    RELIGHT_WEBHOOK_TIMEOUT_S (no redirects; an excerpt of the answer is kept), and records
    the outcome; a failed attempt is scheduled again after the next of
    RELIGHT_WEBHOOK_RETRY_DELAYS (or the receiver's Retry-After) until they are spent.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        urls: UrlBuilder,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.http = http
        self.urls = urls

    async def deliver(self, delivery_id: uuid.UUID) -> tuple[int, float] | None:
        """Make the delivery's next attempt if it is due. `(attempts made, seconds until the
        next one)` when another attempt is scheduled, else None."""
        async with unit_of_work(self.sessionmaker) as uow:
            session = uow.session
            delivery = await service.claim_attempt(
                session, delivery_id, lease_s=self.settings.webhook_timeout_s + 30
            )
            if delivery is None:
                return None
            if delivery.payload is not None:
                data = delivery.payload.encode()
                http_request_id = None
                if delivery.job_id is not None:
                    http_request_id = await jobs.http_request_id_of(session, delivery.job_id)
            else:
                # A job's row from before bodies were stored with the event (migration 0009);
                # a batch's delivery always has its body.
                assert delivery.job_id is not None
                job = await jobs.get_job_by_id(session, delivery.job_id)
                assert job is not None
                outputs = await jobs.get_outputs(session, [job.id])
                data = service.render_body(delivery.event, job, outputs, self.urls)
                http_request_id = job.http_request_id
            signing_secrets = await service.secrets_in_use(session, delivery.tenant_id)
        # The attempt's lines carry the job (or the batch) and the request id of its submit.
        with job_context(delivery.job_id or delivery.batch_id, http_request_id):
            delay = await self._attempt(delivery, data, signing_secrets)
        return None if delay is None else (delivery.attempts, delay)

    async def _attempt(
        self, delivery: WebhookDelivery, data: bytes, signing_secrets: list[str]
    ) -> float | None:
        """POST the signed body once, record the attempt; the delay before the next one."""
        webhook_id = message_id(delivery.id)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
            "webhook-signature": signature_header(signing_secrets, webhook_id, now, data.decode()),
        }
        outcome = await self._post(delivery.url, headers, data)
        try:
            delay = await self._record(delivery, outcome)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            # The outcome must end (or reschedule) the delivery even if what the receiver
            # sent cannot be kept: else a 2xx would be sent again and again, unrecorded.
            logger.exception("could not store webhook %s's attempt as received", webhook_id)
            kept = replace(outcome, response_excerpt=None, error="(the answer could not be stored)")
            delay = await self._record(delivery, kept)
        metrics.WEBHOOK_ATTEMPTS.labels(outcome=attempt_outcome(outcome)).inc()
        logger.info(
            "webhook %s (%s) attempt %d: %s",
            webhook_id,
            delivery.event,
            delivery.attempts,
            outcome.status_code or outcome.error,
        )
        return delay

    async def _record(
        self, delivery: WebhookDelivery, outcome: service.AttemptOutcome
    ) -> float | None:
        async with unit_of_work(self.sessionmaker) as uow:
            return await service.record_attempt(
                uow.session, delivery, outcome, self.settings.webhook_retry_delays
            )

    async def _post(self, url: str, headers: dict[str, str], data: bytes) -> service.AttemptOutcome:
        started_at = datetime.now(UTC)
        started = perf_counter()
        status_code = None
        error = None
        excerpt = None
        retry_after = None
        timeout_s = self.settings.webhook_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                async with egress_stream(
                    self.http,
                    "POST",
                    url,
                    self.settings.egress_policy,
                    field="webhook_url",
                    headers=headers,
                    content=data,
                    timeout_s=timeout_s,
                ) as response:
                    status_code = response.status_code
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                    excerpt = await self._read_excerpt(response)
                    if 300 <= status_code < 400:
                        error = "redirects are not followed"
        except EgressRefused as exc:
            error = exc.message
        except (TimeoutError, httpx.TimeoutException):
            error = f"no answer within {timeout_s:g} s"
        except (httpx.HTTPError, OSError, RelightError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
        return service.AttemptOutcome(
            started_at=started_at,
            duration_ms=round((perf_counter() - started) * 1000, 2),
            status_code=status_code,
            # Both may carry what the receiver sent, and are stored: Postgres text holds no
            # NUL (which, refused at insert, left a delivery pending and sent forever).
            error=None if error is None else storable_text(error),
            response_excerpt=excerpt,
            retry_after_s=retry_after,
        )

    @staticmethod
    async def _read_excerpt(response: httpx.Response) -> str:
        """The start of the receiver's answer, for the attempt log; the rest is not read."""
        received = b""
        async for chunk in response.aiter_bytes():
            received += chunk
            if len(received) >= RESPONSE_EXCERPT_BYTES:
                break
        return storable_text(received[:RESPONSE_EXCERPT_BYTES].decode(errors="replace"))
