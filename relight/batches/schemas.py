"""A batch's request body and its views: the 202 answer, the aggregate record (also the body of
the `batch.completed` webhook)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from relight.core.client_model import ClientModel
from relight.jobs.schemas import ERROR_CODE_DESCRIPTION, ERROR_DESCRIPTION, PublicStatus, SubmitBody

# What a batch's webhook can announce: its own end, and (opted into) each item's events.
BatchWebhookEvent = Literal["batch.completed", "completed", "start"]
BATCH_COMPLETED: Final = "batch.completed"
ITEM_EVENTS = ("completed", "start")
BatchStatus = Literal["QUEUED", "PROCESSING", "COMPLETED"]


def default_batch_events() -> list[BatchWebhookEvent]:
    return [BATCH_COMPLETED]


class BatchOptions(ClientModel):
    """A batch's body, its items aside (each is read as a `POST /v2/ic-light` body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: list[Any] = Field(min_length=1)
    webhook_url: Annotated[str | None, Field(max_length=2048)] = None
    webhook_events: list[BatchWebhookEvent] = Field(default_factory=default_batch_events)


class BatchBody(BaseModel):
    """The body of `POST /v2/batches` (JSON only)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "requests": [
                    {"prompt": "cat, sunset", "subject_image": "https://example.com/cat.png"},
                    {"prompt": "dog, neon", "subject_image": "https://example.com/dog.png"},
                ],
                "webhook_url": "https://example.com/hooks/relight",
            }
        },
    )

    requests: list[SubmitBody] = Field(
        min_length=1,
        description="each a `POST /v2/ic-light` body, without `webhook_url` or "
        "`webhook_events` (the batch's apply); at most RELIGHT_MAX_BATCH_SIZE (100)",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="where the batch's webhooks go (default: the account's webhook URL)",
    )
    webhook_events: list[BatchWebhookEvent] = Field(
        default_factory=default_batch_events,
        description="`batch.completed` (once, when every item has ended), and each item's own "
        "`completed` and `start` if listed",
    )


class BatchAccepted(BaseModel):
    """The 202 answer of `POST /v2/batches`."""

    batch_id: uuid.UUID
    request_ids: list[uuid.UUID] = Field(description="the items' request ids, in body order")
    status_url: str
    cancel_url: str
    credits_reserved: int = Field(description="what every item together reserved")


class BatchItemView(BaseModel):
    request_id: uuid.UUID
    status: PublicStatus
    output: str | list[str] | None = Field(
        description="as a request's record: the signed image URL once COMPLETED (a list when "
        "`number_of_images` > 1)"
    )
    error: str | None = Field(default=None, description=ERROR_DESCRIPTION)
    error_code: str | None = Field(default=None, description=ERROR_CODE_DESCRIPTION)


class BatchView(BaseModel):
    """`GET /v2/batches/{id}`, and the body of the `batch.completed` webhook (with `event`)."""

    batch_id: uuid.UUID
    status: BatchStatus = Field(
        description="QUEUED (no item started), PROCESSING, or COMPLETED once every item has "
        "ended (COMPLETED, FAILED or CANCELED)"
    )
    counts: dict[PublicStatus, int] = Field(description="how many items are in each status")
    requests: list[BatchItemView]
    credits_reserved: int
    credits_charged: int
    created_at: datetime
    completed_at: datetime | None
    status_url: str
    cancel_url: str


class BatchSummary(BaseModel):
    """One batch in `GET /v2/batches`: its status and counts, without its items (the batch's
    own record, `status_url`, lists them)."""

    batch_id: uuid.UUID
    status: BatchStatus = Field(
        description="QUEUED (no item started), PROCESSING, or COMPLETED once every item has "
        "ended (COMPLETED, FAILED or CANCELED)"
    )
    counts: dict[PublicStatus, int] = Field(description="how many items are in each status")
    item_count: int = Field(description="how many requests the batch holds")
    credits_reserved: int
    credits_charged: int
    created_at: datetime
    completed_at: datetime | None
    status_url: str
    cancel_url: str


class BatchList(BaseModel):
    """A page of `GET /v2/batches`, newest first."""

    data: list[BatchSummary]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next (older) page; null on the last page"
    )
