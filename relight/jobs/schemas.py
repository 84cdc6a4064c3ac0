"""Request bodies and the JSON views of a job (the public record, its status, listings)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from relight.core.params import (
    PRIORITY_DESCRIPTION,
    Backend,
    BackgroundSource,
    Priority,
    RelightParams,
    SubmitOptions,
    WebhookEvent,
    default_webhook_events,
)


class PublicStatus(StrEnum):
    """A request's status as Segmind's v2 API spells it (one schema for every view)."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


# Segmind's shape: `error` is the message a person reads (its SDK raises it as the detail of
# InferenceFailed); the code a program branches on sits beside it, as in every error answer.
ERROR_DESCRIPTION = "on FAILED (and CANCELED), what went wrong, for people"
ERROR_CODE_DESCRIPTION = "on FAILED (and CANCELED), what went wrong, for programs"
DEADLINE_DESCRIPTION = (
    "when the request is canceled (error_code `deadline_exceeded`, refunded) if it has not "
    "finished: the acceptance plus its `Cancel-After`; null without one"
)
TIMINGS_DESCRIPTION = (
    "milliseconds by stage: `fetch_ms`, `decode_ms`, `backend_ms`, `store_ms`, `total_ms`, and "
    "the backend's own (`engine_ms`, `upstream_ms`, `node_ms`, ...)"
)


class SubmitBody(RelightParams):
    """The body of `POST /v1/ic-light` and `POST /v2/ic-light`: Segmind's fields plus ours."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "example": {
                "prompt": "cat, photoshoot, 4k",
                "subject_image": "https://example.com/cat.png",
                "light_source": "Left Light",
                "seed": 42,
            }
        },
    )

    subject_image: Annotated[
        str,
        Field(
            min_length=1,
            description="http(s) URL, base64 or data URL (or a file part in multipart form)",
        ),
    ]
    background_image: Annotated[
        str | None,
        Field(
            min_length=1,
            validate_default=True,
            description="Relight's extension (IC-Light fbc): the background to relight the "
            "subject onto, as subject_image (URL, base64, data URL or a file part); with it, "
            "background_source defaults to 'Use Background Image'",
        ),
    ] = None
    backend: Backend = Backend.AUTO
    webhook_url: Annotated[str | None, Field(max_length=2048)] = None
    webhook_events: list[WebhookEvent] = Field(default_factory=default_webhook_events)
    priority: Annotated[Priority, Field(description=PRIORITY_DESCRIPTION)] = Priority.NORMAL

    @model_validator(mode="before")
    @classmethod
    def _background_source_follows_the_image(cls, data: object) -> object:
        if (
            isinstance(data, dict)
            and data.get("background_image") not in (None, "")
            and data.get("background_source") in (None, "")
        ):
            return {**data, "background_source": BackgroundSource.UPLOAD.value}
        return data

    @field_validator("background_image")
    @classmethod
    def _image_for_an_image_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        source = info.data.get("background_source")
        if value is None and source is not None and source.needs_image:
            raise ValueError(f"background_source {source.value!r} needs a background_image")
        return value

    def split(self) -> tuple[RelightParams, SubmitOptions]:
        data = self.model_dump()
        options = SubmitOptions(
            backend=data.pop("backend"),
            webhook_url=data.pop("webhook_url"),
            webhook_events=data.pop("webhook_events"),
            priority=data.pop("priority"),
        )
        data.pop("subject_image")
        data.pop("background_image")
        return RelightParams(**data), options


class OutputView(BaseModel):
    index: int
    url: str
    content_type: str
    width: int
    height: int
    bytes: int
    seed: int
    sha256: str
    expired_at: datetime | None = Field(
        default=None, description="when retention deleted the image (downloads then answer 410)"
    )


class CreditsView(BaseModel):
    reserved: int
    charged: int


class RequestParams(RelightParams):
    """The parameters a request ran with: Segmind's, with the seed that was used."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="RequestParams")

    seed: int = Field(description="the seed used (drawn at submit when none was given)")


class BackendCallView(BaseModel):
    """One call an attempt made outside the worker (Segmind's API, a GPU node)."""

    backend: str
    started_at: str = Field(description="ISO 8601")
    latency_ms: float
    outcome: str = Field(description="ok, or what went wrong (http_error, timeout, ...)")
    status_code: int | None = None
    error: str | None = None
    remaining_credits: float | None = Field(
        default=None, description="Segmind's x-remaining-credits, when it answered one"
    )
    node: str | None = Field(default=None, description="the GPU node, for `gpu`")


class BackendAttemptView(BaseModel):
    """One attempt at running the request, on one backend."""

    attempt: int = Field(description="from 1")
    backend: str
    outcome: Literal["ok", "failed"]
    calls: list[BackendCallView] = Field(default_factory=list)
    code: str | None = Field(default=None, description="on failure, the error code")
    retryable: bool | None = Field(default=None, description="on failure: worth another try")
    failover: bool | None = Field(default=None, description="on failure: try another backend")


class BackendView(BaseModel):
    requested: str
    used: str | None
    node: str | None
    attempts: list[BackendAttemptView] = Field(
        default_factory=list,
        description="one entry per attempt: backend, outcome, error code and the upstream calls "
        "it made (status, latency, remaining credits)",
    )


STREAM_URL_DESCRIPTION = (
    "this request's status stream (`/status/stream`), signed and expiring like output URLs "
    "(`RELIGHT_OUTPUT_URL_TTL_S`): it opens without an API key, so a browser page can follow "
    "the request with `new EventSource(stream_url)`"
)


class RequestView(BaseModel):
    """The full record: `GET /v2/requests/{id}` (and the webhook body, later)."""

    request_id: uuid.UUID
    status: PublicStatus
    params: RequestParams
    model_digest: str | None = Field(
        default=None,
        description="the weights that rendered the images: the sha256 of the GPU node's model "
        "folder manifest (with `params.seed`, what reproduces the images); null on other "
        "backends and before the request completes",
    )
    subject_image: str | None = Field(
        description="the URL the subject came from, or null when it was sent inline"
    )
    background_image: str | None = Field(
        default=None,
        description="the URL the background came from (IC-Light fbc), or null when it was sent "
        "inline or there is none",
    )
    output: str | list[str] | None = Field(
        description="Segmind's field: the signed URL of the image once COMPLETED (a list of URLs "
        "when `number_of_images` > 1); null before. `outputs` has the details"
    )
    outputs: list[OutputView]
    error: str | None = Field(description=ERROR_DESCRIPTION)
    error_code: str | None = Field(description=ERROR_CODE_DESCRIPTION)
    credits: CreditsView
    backend: BackendView
    attempts: int
    progress: float
    timings: dict[str, float] = Field(description=TIMINGS_DESCRIPTION)
    metrics: dict[str, float] = Field(description="Segmind's field: the same as `timings`")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    priority: Priority = Field(
        default=Priority.NORMAL, description="the lane it waited in within your queue"
    )
    deadline_at: datetime | None = Field(default=None, description=DEADLINE_DESCRIPTION)
    status_url: str
    response_url: str
    stream_url: str = Field(description=STREAM_URL_DESCRIPTION)


class StatusView(BaseModel):
    request_id: uuid.UUID
    status: PublicStatus
    queue_position: int | None = None
    progress: float | None = None
    error: str | None = Field(default=None, description=ERROR_DESCRIPTION)
    error_code: str | None = Field(default=None, description=ERROR_CODE_DESCRIPTION)
    metrics: dict[str, float] = Field(description="timings so far, in milliseconds")
    deadline_at: datetime | None = Field(default=None, description=DEADLINE_DESCRIPTION)
    stream_url: str | None = Field(default=None, description=STREAM_URL_DESCRIPTION)


class SubmitAccepted(BaseModel):
    """The 202 answer of `POST /v2/ic-light`, Segmind's v2 fields plus ours."""

    request_id: uuid.UUID
    status: PublicStatus
    poll_url: str
    status_url: str
    response_url: str
    cancel_url: str
    stream_url: str = Field(description=STREAM_URL_DESCRIPTION)
    credits_reserved: int
    priority: Priority = Field(default=Priority.NORMAL, description="the request's lane")
    deadline_at: datetime | None = Field(default=None, description=DEADLINE_DESCRIPTION)


class SyncImage(BaseModel):
    index: int
    content_type: str
    width: int
    height: int
    seed: int
    data: str = Field(description="the image bytes, base64")


class SyncImages(BaseModel):
    """`POST /v1/ic-light` answered with `Accept: application/json`: every image, base64."""

    request_id: uuid.UUID
    seed: int
    images: list[SyncImage]


class RequestList(BaseModel):
    data: list[RequestView]
    next_cursor: str | None
