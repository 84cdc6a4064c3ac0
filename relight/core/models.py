"""ORM tables, all on one metadata object (the schema itself is created by alembic only)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from relight.core.db import Base
from relight.core.ids import uuid7


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)

    @property
    def public(self) -> str:
        """The status as Segmind's v2 API spells it."""
        return {
            JobStatus.QUEUED: "QUEUED",
            JobStatus.RUNNING: "PROCESSING",
            JobStatus.SUCCEEDED: "COMPLETED",
            JobStatus.FAILED: "FAILED",
            JobStatus.CANCELED: "CANCELED",
        }[self]


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class CreditKind(StrEnum):
    """Ledger entry kinds. A job's entries sum to minus what it finally cost."""

    GRANT = "grant"  # credits bought or given: positive
    RESERVE = "reserve"  # the price, taken at submit: negative
    CHARGE = "charge"  # settles a succeeded job: releases any over-reservation (>= 0)
    REFUND = "refund"  # gives a failed, canceled or expired job's reservation back: positive
    ADJUST = "adjust"  # an operator's correction, either sign


class Tenant(Base):
    __tablename__ = "tenant"
    __table_args__ = (
        CheckConstraint("credit_balance >= 0", name="credit_balance_non_negative"),
        CheckConstraint("active_jobs >= 0", name="active_jobs_non_negative"),
        CheckConstraint(
            "requests_per_minute > 0 AND burst > 0 AND max_in_flight > 0", name="limits_positive"
        ),
        CheckConstraint("weight BETWEEN 1 AND 100", name="weight_in_range"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(
        String(20), default=TenantStatus.ACTIVE.value, server_default=TenantStatus.ACTIVE.value
    )
    credit_balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Queued plus running jobs, kept in step by the same UPDATEs that move credits.
    active_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    requests_per_minute: Mapped[int] = mapped_column(Integer, default=120, server_default="120")
    burst: Mapped[int] = mapped_column(Integer, default=30, server_default="30")
    max_in_flight: Mapped[int] = mapped_column(Integer, default=20, server_default="20")
    # Jobs started per turn of fair dispatch (relight/jobs/queue.py mirrors it into Redis).
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Backends this tenant's requests may use (`auto` picks among them).
    allowed_backends: Mapped[list[str]] = mapped_column(
        JSONB,
        default=lambda: ["gpu", "segmind", "local"],
        server_default=text('\'["gpu", "segmind", "local"]\'::jsonb'),
    )
    # Priority lanes this tenant's requests may use; `high` only when an operator allows it.
    allowed_lanes: Mapped[list[str]] = mapped_column(
        JSONB,
        default=lambda: ["normal", "low"],
        server_default=text('\'["normal", "low"]\'::jsonb'),
    )
    # Where webhooks go when a request names no webhook_url.
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Standard Webhooks signing secrets (whsec_…). Rotated-out ones keep signing until each
    # expires: `[{"secret", "expires_at"}]`, newest first (relight/webhooks/service.py).
    webhook_secret: Mapped[str | None] = mapped_column(String(100))
    webhook_retired_secrets: Mapped[list[dict[str, str]]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    created_at: Mapped[datetime] = _now_column()


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenant.id", ondelete="CASCADE"), index=True
    )
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now_column()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the key may do (relight/tenants/scopes.py, whose DEFAULT_SCOPES this default
    # spells out: keys made before scopes got it, and so does an insert that names none).
    scopes: Mapped[list[str]] = mapped_column(
        JSONB,
        server_default=text(
            '\'["relight:submit", "requests:read", "requests:cancel", "webhooks:manage", '
            '"account:read"]\'::jsonb'
        ),
    )
    # None: the key never expires.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Batch(Base):
    """A set of ordinary requests submitted together (`job.batch_id`): it aggregates their
    status and announces `batch.completed` once, when its last item ends (`completed_at`)."""

    __tablename__ = "batch"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_batch_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    item_count: Mapped[int] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    http_request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = _now_column()
    # Set once, in the transaction that ends the batch's last item.
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_job_tenant_id_id", "tenant_id", "id"),
        # The operators' page pages every tenant's requests on (created_at, id) (0019).
        Index("ix_job_created_at_id", "created_at", "id"),
        Index(
            "ix_job_queued_created_at",
            "created_at",
            postgresql_where=text("status = 'queued'"),
        ),
        # The sweeper's periodic queries (migration 0008).
        Index(
            "ix_job_running_lease_expires_at",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        Index(
            "ix_job_stored_input_finished_at",
            "finished_at",
            postgresql_where=text("input_storage_key IS NOT NULL"),
        ),
        Index(
            "ix_job_stored_background_finished_at",
            "finished_at",
            postgresql_where=text("background_storage_key IS NOT NULL"),
        ),
        Index("ix_job_batch_id", "batch_id", postgresql_where=text("batch_id IS NOT NULL")),
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')",
            name="status_known",
        ),
        CheckConstraint("priority IN ('high', 'normal', 'low')", name="priority_known"),
        # The sweeper's fallback for deadlines (migration 0016).
        Index(
            "ix_job_unfinished_deadline_at",
            "deadline_at",
            postgresql_where=text("deadline_at IS NOT NULL AND status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    # The API key that submitted it (usage by key); None before migration 0018.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_key.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(
        String(20), default=JobStatus.QUEUED.value, server_default=JobStatus.QUEUED.value
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    input_url: Mapped[str | None] = mapped_column(Text)
    input_storage_key: Mapped[str | None] = mapped_column(String(300))
    # The background image of an IC-Light fbc request (`params.background_source`).
    background_url: Mapped[str | None] = mapped_column(Text)
    background_storage_key: Mapped[str | None] = mapped_column(String(300))
    seed: Mapped[int] = mapped_column(BigInteger)
    backend_requested: Mapped[str] = mapped_column(String(20))
    backend_used: Mapped[str | None] = mapped_column(String(20))
    node: Mapped[str | None] = mapped_column(String(200))
    # The GPU node's model digest (sha256 hex of its model folder's manifest), set on success.
    model_digest: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    credits_reserved: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    credits_charged: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    # The batch the job is an item of (`POST /v2/batches`), if any.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batch.id", ondelete="SET NULL"))
    # The X-Request-ID of the submit, so the worker's and the webhooks' log lines carry it.
    http_request_id: Mapped[str | None] = mapped_column(String(128))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    timings: Mapped[dict[str, float]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    # Every call a backend made outside the worker (Segmind, GPU nodes): status, latency, outcome.
    backend_calls: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When an unfinished request is canceled (`Cancel-After`); None: never.
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The lane within its tenant's queue: high, normal or low (`relight.core.params.Priority`).
    priority: Mapped[str] = mapped_column(String(10), default="normal", server_default="normal")

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)


class JobOutput(Base):
    __tablename__ = "job_output"
    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        # Outputs whose stored image still exists, for the retention sweep (migration 0008).
        Index("ix_job_output_live_job_id", "job_id", postgresql_where=text("deleted_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(300))
    content_type: Mapped[str] = mapped_column(String(50))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _now_column()
    # Set when retention deleted the stored image (the row stays: the record keeps its history).
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CreditEntry(Base):
    """The append-only credit ledger: a tenant's balance always equals the sum of its entries."""

    __tablename__ = "credit_entry"
    __table_args__ = (
        # One reservation, one charge and one refund per job at most: retries cannot pay twice.
        Index(
            "uq_credit_entry_job_id_kind",
            "job_id",
            "kind",
            unique=True,
            postgresql_where=text("job_id IS NOT NULL AND kind IN ('reserve', 'charge', 'refund')"),
        ),
        Index("ix_credit_entry_tenant_id_id", "tenant_id", "id"),
        CheckConstraint(
            "kind IN ('grant', 'reserve', 'charge', 'refund', 'adjust')", name="kind_known"
        ),
        CheckConstraint("balance_after >= 0", name="balance_after_non_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()


class WebhookStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    DELIVERED = "delivered"  # a 2xx answer
    STOPPED = "stopped"  # the receiver answered 410 Gone
    FAILED = "failed"  # every scheduled attempt failed


class WebhookDelivery(Base):
    """One event of one request (or of one batch: `batch.completed`) to one URL; retried on a
    schedule until it is delivered."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("job_id", "event"),
        UniqueConstraint("batch_id", "event"),
        CheckConstraint("job_id IS NOT NULL OR batch_id IS NOT NULL", name="job_or_batch"),
        Index(
            "ix_webhook_delivery_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # The operators' page's failing deliveries, paged on (created_at, id) (0019).
        Index(
            "ix_webhook_delivery_failing_created_at_id",
            "created_at",
            "id",
            postgresql_where=text("status = 'failed' OR (status = 'pending' AND attempts > 0)"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batch.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(20))
    url: Mapped[str] = mapped_column(Text)
    # The JSON body, rendered when the event happened; every attempt sends these bytes. Text,
    # not jsonb, which would reorder keys and respace. NULL only for rows made before 0009.
    payload: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        String(20), default=WebhookStatus.PENDING.value, server_default="pending"
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Attempts made before the current round (a redelivery starts a new round of retries).
    round_start: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Who asked for the current round (`api_key:<prefix>`); NULL: the event itself.
    round_requested_by: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()


class WebhookAttempt(Base):
    """Every attempt of a delivery, as the receiver answered it."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (UniqueConstraint("delivery_id", "number"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_delivery.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    # Who asked for it: NULL when the event scheduled it, else the redelivery's asker.
    requested_by: Mapped[str | None] = mapped_column(Text)
