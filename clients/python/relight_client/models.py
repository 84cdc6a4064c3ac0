"""Typed views of Relight's JSON, mirroring the server's schemas (`relight/jobs/schemas.py`,
`relight/credits/schemas.py`, `relight/tenants/schemas.py`, the live `/openapi.json`).

Models accept fields they do not know yet (`extra="allow"`), so a newer server never breaks an
older client; everything documented is typed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Status(StrEnum):
    """A request's status, as Segmind's v2 API spells it."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELED)


class Output(_Model):
    """One image of a finished request; `url` is signed and expires (no key needed)."""

    index: int
    url: str
    content_type: str
    width: int
    height: int
    bytes: int
    seed: int
    sha256: str
    expired_at: datetime | None = None


class Credits(_Model):
    reserved: int
    charged: int


class BackendCall(_Model):
    backend: str
    started_at: str
    latency_ms: float
    outcome: str
    status_code: int | None = None
    error: str | None = None
    remaining_credits: float | None = None
    node: str | None = None


class BackendAttempt(_Model):
    attempt: int
    backend: str
    outcome: Literal["ok", "failed"]
    calls: list[BackendCall] = Field(default_factory=list)
    code: str | None = None
    retryable: bool | None = None
    failover: bool | None = None


class BackendInfo(_Model):
    requested: str
    used: str | None = None
    node: str | None = None
    attempts: list[BackendAttempt] = Field(default_factory=list)


class RequestParams(_Model):
    """The parameters a request ran with (Segmind's, with their defaults), and the seed used."""

    prompt: str
    appended_prompt: str = "best quality"
    negative_prompt: str = "lowres, bad anatomy, bad hands, cropped, worst quality"
    cfg: float = 2
    width: int = 512
    height: int = 640
    steps: int = 25
    seed: int
    highres_scale: float = 1.5
    highres_denoise: float = 0.5
    lowres_denoise: float = 0.9
    light_source: str = "None"
    background_source: str | None = None
    number_of_images: int = 1
    output_format: str = "webp"
    output_quality: int = 80


class Record(_Model):
    """The full record of a request: `GET /v2/requests/{id}` (and a webhook's body)."""

    request_id: str
    status: Status
    params: RequestParams
    model_digest: str | None = None
    subject_image: str | None = None
    background_image: str | None = None
    output: str | list[str] | None = None
    outputs: list[Output] = Field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    credits: Credits
    backend: BackendInfo
    attempts: int
    progress: float
    timings: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    priority: str = "normal"
    deadline_at: datetime | None = None
    status_url: str
    response_url: str
    # Signed: opens the status stream without a key (a browser's EventSource).
    stream_url: str | None = None


class RequestStatus(_Model):
    """`GET /v2/requests/{id}/status`: what `stream()` yields on every change."""

    request_id: str
    status: Status
    queue_position: int | None = None
    progress: float | None = None
    error: str | None = None
    error_code: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    deadline_at: datetime | None = None
    stream_url: str | None = None


class Accepted(_Model):
    """The 202 answer of `POST /v2/ic-light`."""

    request_id: str
    status: Status
    poll_url: str
    status_url: str
    response_url: str
    cancel_url: str
    stream_url: str | None = None
    credits_reserved: int
    priority: str = "normal"
    deadline_at: datetime | None = None


class BatchAccepted(_Model):
    """The 202 answer of `POST /v2/batches`."""

    batch_id: str
    request_ids: list[str]
    status_url: str
    cancel_url: str
    credits_reserved: int


class BatchItem(_Model):
    """One item of a batch, as `GET /v2/batches/{id}` lists it."""

    request_id: str
    status: Status
    output: str | list[str] | None = None
    error: str | None = None
    error_code: str | None = None


class Batch(_Model):
    """`GET /v2/batches/{id}` (and the body of the `batch.completed` webhook, with `event`)."""

    batch_id: str
    status: Literal["QUEUED", "PROCESSING", "COMPLETED"]
    counts: dict[Status, int]
    requests: list[BatchItem]
    credits_reserved: int
    credits_charged: int
    created_at: datetime
    completed_at: datetime | None = None
    status_url: str
    cancel_url: str

    @property
    def is_completed(self) -> bool:
        """Whether every item has ended (COMPLETED, FAILED or CANCELED)."""
        return self.status == "COMPLETED"


class BatchSummary(_Model):
    """One batch of `GET /v2/batches` (`list_batches`): its status and counts, not its items
    (`get_batch` has them)."""

    batch_id: str
    status: Literal["QUEUED", "PROCESSING", "COMPLETED"]
    counts: dict[Status, int]
    item_count: int
    credits_reserved: int
    credits_charged: int
    created_at: datetime
    completed_at: datetime | None = None
    status_url: str
    cancel_url: str

    @property
    def is_completed(self) -> bool:
        """Whether every item has ended (COMPLETED, FAILED or CANCELED)."""
        return self.status == "COMPLETED"


class Limits(_Model):
    requests_per_minute: int
    burst: int
    max_in_flight: int


class Usage(_Model):
    active_jobs: int
    requests_30d: dict[str, int]
    credits_charged_30d: int


class Account(_Model):
    """`GET /v2/account`: balance, limits and the last 30 days' usage."""

    tenant_id: str
    name: str
    status: str
    credits: int
    limits: Limits
    usage: Usage


class UsageFigures(_Model):
    """One period's (or the window's) usage: see `GET /v2/usage`."""

    requests: int
    completed: int
    failed: int
    canceled: int
    images: int
    credits_charged: int
    credits_refunded: int
    credits_net: int
    gpu_seconds: float


class UsagePeriod(UsageFigures):
    period: str


class UsageReport(_Model):
    """`GET /v2/usage`: usage by UTC day, backend or key over `[from, to)`."""

    data: list[UsagePeriod]
    from_: datetime = Field(alias="from")
    to: datetime
    group_by: str
    totals: UsageFigures


class WebhookSecret(_Model):
    """`GET /v2/webhooks/secret`: the Standard Webhooks signing secret (`whsec_…`)."""

    secret: str
    previous_secret_expires_at: datetime | None = None
    retired_secrets_expire_at: list[datetime] = Field(default_factory=list)


class WebhookAttempt(_Model):
    """One attempt of a webhook delivery, as the receiver answered it."""

    number: int
    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    # None when the event scheduled it; for a redelivery, who asked (`api_key:<prefix>`).
    requested_by: str | None = None


class WebhookDelivery(_Model):
    """One webhook of a request or a batch (`GET /v2/requests/{id}/webhooks`,
    `GET /v2/batches/{id}/webhooks`), with every attempt; `webhook_id` is the `webhook-id`
    header, the same on every attempt and redelivery."""

    id: str
    webhook_id: str
    event: str
    url: str
    status: str  # pending, delivered, stopped (410) or failed
    attempts: int
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    attempt_log: list[WebhookAttempt] = Field(default_factory=list)


class WebhookEvent(Record):
    """A webhook's body: the request's record plus the event (`completed` or `start`)."""

    event: str


class Tenant(_Model):
    id: str
    name: str
    status: str
    credit_balance: int
    active_jobs: int
    limits: Limits
    allowed_backends: list[str]
    allowed_lanes: list[str] = Field(default_factory=lambda: ["normal", "low"])
    webhook_url: str | None = None
    weight: int = 1
    created_at: datetime


class Key(_Model):
    """One of your API keys, as `GET /v2/keys` lists it (never its secret)."""

    id: str
    prefix: str
    label: str | None = None
    scopes: list[str] = Field(default_factory=list)
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class NewKey(Key):
    """`POST /v2/keys`: the new key, with the key itself (shown once, never stored)."""

    key: str


class ApiKey(Key):
    """A key as the admin API shows it: with its tenant, and `name` (the label)."""

    tenant_id: str
    name: str | None = None


class CreatedApiKey(ApiKey):
    key: str = Field(description="the key itself: shown once, never stored")


class LedgerEntry(_Model):
    id: str
    kind: str
    amount: int
    balance_after: int
    request_id: str | None = None
    reason: str | None = None
    created_at: datetime
