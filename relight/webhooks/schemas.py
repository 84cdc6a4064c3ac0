"""Views of webhook deliveries and the tenant's signing secret."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from relight.core.models import WebhookAttempt, WebhookDelivery


class AttemptView(BaseModel):
    number: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    requested_by: str | None = Field(
        description="null when the event scheduled it; for a redelivery, who asked "
        "(`api_key:<prefix>`)"
    )

    @classmethod
    def of(cls, attempt: WebhookAttempt) -> AttemptView:
        return cls(
            number=attempt.number,
            started_at=attempt.started_at,
            duration_ms=attempt.duration_ms,
            status_code=attempt.status_code,
            error=attempt.error,
            requested_by=attempt.requested_by,
        )


class DeliveryView(BaseModel):
    id: uuid.UUID
    webhook_id: str = Field(description="the `webhook-id` header, the same on every attempt")
    event: str
    url: str
    status: str = Field(description="pending, delivered, stopped (410) or failed")
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    attempt_log: list[AttemptView]

    @classmethod
    def of(cls, delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryView:
        return cls(
            id=delivery.id,
            webhook_id=message_id(delivery.id),
            event=delivery.event,
            url=delivery.url,
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            delivered_at=delivery.delivered_at,
            attempt_log=[AttemptView.of(attempt) for attempt in attempts],
        )


class DeliveryList(BaseModel):
    data: list[DeliveryView]


class WebhookSecretView(BaseModel):
    secret: str = Field(description="verify signatures with this (whsec_…)")
    previous_secret_expires_at: datetime | None = Field(
        description="until then, webhooks also carry a signature made with the previous secret"
    )
    retired_secrets_expire_at: list[datetime] = Field(
        default_factory=list,
        description="every rotated-out secret still signing, newest first: until each time, "
        "webhooks also carry a signature made with it (at most 5)",
    )


def message_id(delivery_id: uuid.UUID) -> str:
    return f"msg_{delivery_id.hex}"
