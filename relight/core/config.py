"""Settings: one object, read from `RELIGHT_*` environment variables (and an optional .env)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relight.core.egress import EgressPolicy
from relight.core.redis_url import check_redis_url

DEVELOPMENT_SECRET = "relight-development-secret-do-not-use-in-production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELIGHT_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/relight"
    database_pool_size: int = Field(default=10, ge=1)
    # How long a request (or a job step) waits for a pooled Postgres connection while every one
    # is in use, before it gives up: the api then answers 503 `database_busy` with Retry-After.
    # SQLAlchemy's own 30 s outlasts most clients' patience: past 10 s a client is better told
    # to come back than kept waiting behind a queue that long.
    database_pool_timeout_s: float = Field(default=10.0, gt=0)
    # What stands between us and Postgres (it cannot be detected): `transaction` for a
    # transaction-pooling PgBouncer (no server-side prepared statement outlives its
    # transaction), `session` for session pooling, `none` for Postgres itself.
    database_pooler: Literal["none", "session", "transaction"] = "none"
    # A direct connection (not through a transaction pooler) for the auth cache's LISTEN;
    # unset = RELIGHT_DATABASE_URL.
    database_listen_url: str | None = None
    # `redis://…`, `rediss://…`, or `redis+sentinel://host:port,…/service_name/db` for the
    # primary Redis Sentinel names (see relight/core/redis_url.py).
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "relight:queue"
    storage_dir: Path = Path("var/storage")
    # `file:///path` or `s3://bucket/prefix`; unset = the folder RELIGHT_STORAGE_DIR.
    storage_url: str | None = None
    # An S3-compatible endpoint (MinIO, R2, a test server); unset = AWS S3 itself.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # With S3: output URLs on this public (CDN) base instead of presigned URLs.
    public_output_base_url: str | None = None
    secret_key: str = DEVELOPMENT_SECRET
    # Bearer token of the admin API (/admin/v1); the admin API is off while this is unset.
    admin_token: str | None = Field(default=None, min_length=16)
    # Wrong admin tokens one client address may present a minute (admin API and operators'
    # page together) before every sign-in from it is refused with 429 for the rest of the minute.
    admin_signin_failures_per_minute: int = Field(default=5, ge=1)
    public_base_url: str | None = None
    # How long an API process trusts an API key it authenticated, for submits (0: always ask
    # Postgres); revocations and tenant changes reach every process at once through NOTIFY.
    auth_cache_s: float = Field(default=5.0, ge=0)
    # Browser front-ends on these origins may call the public API (CORS): comma-separated
    # `https://app.example.com` origins, or `*` for any; empty (the default) is off.
    cors_origins: str = ""
    # Let browsers send cookies / HTTP auth cross-origin (never with `*`). The API key travels
    # in a header, so no front-end needs this to call Relight.
    cors_allow_credentials: bool = False
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    # Outbound requests (subject_image URLs, webhooks) may reach only public addresses, plus
    # these comma-separated host names and CIDRs.
    egress_allowlist: str = ""

    # Inputs.
    max_input_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_input_pixels: int = Field(default=40_000_000, ge=1024)
    fetch_timeout_s: float = Field(default=20.0, gt=0)
    # Largest body of a route that takes no image (admin API, the operators' page's forms,
    # every other POST); the relight submits take up to an inline image's worth.
    max_json_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Most items in one batch (`POST /v2/batches`): 422 above.
    max_batch_size: int = Field(default=100, ge=1, le=1000)
    # Largest request head (request line and headers together): 431 above.
    max_header_bytes: int = Field(default=32 * 1024, ge=4096)
    # Status streams (`GET /v2/requests/{id}/status/stream`) open at once, per API key and per
    # tenant, in each api process: 429 above.
    max_streams_per_key: int = Field(default=20, ge=1)
    max_streams_per_tenant: int = Field(default=100, ge=1)

    # Jobs.
    sync_timeout_s: float = Field(default=60.0, gt=0)
    # A status stream sends a comment this often while nothing changes, so proxies keep it open.
    status_stream_ping_s: float = Field(default=15.0, gt=0)
    job_timeout_s: float = Field(default=300.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    lease_s: float = Field(default=60.0, gt=0)
    # A job `queued` in Postgres for this long without running is enqueued again in arq's queue.
    requeue_grace_s: float = Field(default=10.0, gt=0)
    output_url_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Stored inputs and outputs of finished requests are deleted after this long (0: never).
    retention_s: int = Field(default=7 * 24 * 3600, ge=0)

    # Backends. `auto` tries them in this order, skipping those not configured or not allowed.
    backend_failover_order: str = "gpu,segmind,local"
    segmind_api_key: str | None = None
    segmind_base_url: str = "https://api.segmind.com"
    segmind_timeout_s: float = Field(default=120.0, gt=0)
    # Calls at once for one request (Segmind returns one image per call).
    segmind_concurrency: int = Field(default=4, ge=1, le=12)
    # How the subject reaches Segmind: `auto` = its original URL when it came as one, else a
    # signed URL to our copy when RELIGHT_PUBLIC_BASE_URL is set, else base64; `base64` always.
    segmind_subject: Literal["auto", "base64"] = "auto"

    # GPU nodes (`relight-node`). Static ones: comma-separated `URL` or `URL=CAPACITY`; others
    # are discovered from their heartbeats in Redis under `gpu_namespace` (nodes and workers
    # must agree on it).
    gpu_nodes: str = ""
    gpu_discovery: bool = True
    gpu_namespace: str = "relight:gpu"
    # Shared secret between workers and nodes, sent as a Bearer token (nodes read the same
    # variable); unset = nodes accept any caller.
    node_token: str | None = Field(default=None, min_length=16)
    # A slot held by a worker that died frees itself after this long (live holders renew it).
    gpu_slot_ttl_s: float = Field(default=30.0, ge=1)
    # A `backend: gpu` job waits this long for a free slot before its try counts as failed.
    gpu_wait_s: float = Field(default=30.0, ge=0)
    gpu_connect_timeout_s: float = Field(default=5.0, gt=0)
    # Longest silence on a node's progress stream before the node counts as gone.
    gpu_read_timeout_s: float = Field(default=60.0, gt=0)
    # A `gpu` render may take longer than job_timeout_s when the request is large (its
    # timeout follows its size: relight/nodes/render_time.py), up to this long.
    gpu_job_timeout_max_s: float = Field(default=3600.0, gt=0)
    # Circuit breaker per node, shared by every worker through Redis.
    gpu_breaker_failures: int = Field(default=3, ge=1)
    gpu_breaker_cooldown_s: float = Field(default=30.0, gt=0)

    # Worker.
    worker_concurrency: int = Field(default=4, ge=1)
    # New jobs wake idle workers at once (pub/sub); the poll only covers a lost wake-up.
    worker_poll_delay_s: float = Field(default=1.0, gt=0)
    # Workers take turns between tenants with queued jobs instead of arq's
    # global due order; off only to measure the difference (bench/fairness.py).
    fair_dispatch: bool = True
    # On SIGTERM a worker takes no new job and lets running ones finish for this long, then
    # hands the rest back to the queue.
    shutdown_grace_s: int = Field(default=20, ge=0)
    local_backend_enabled: bool = True
    local_engine_threads: int = Field(default=2, ge=1)
    # Each worker serves Prometheus metrics on this port (0: off).
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"

    # Webhooks.
    webhook_timeout_s: float = Field(default=15.0, gt=0)
    # Seconds before each retry (the first attempt is immediate), with ±10 % jitter.
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_secret_overlap_s: int = Field(default=24 * 3600, ge=0)
    webhook_sweep_interval_s: int = Field(default=5, ge=1, le=60)
    # Redeliveries a tenant may ask for (each sends signed POSTs to a URL it chose, so it has a
    # budget of its own, apart from the submit limit): this many at once, then this many a minute.
    webhook_redeliver_burst: int = Field(default=5, ge=1)
    webhook_redeliver_per_minute: int = Field(default=1, ge=1)

    # Credits: the price of the default request (one 768x960 image, 25 steps).
    credits_per_default_image: int = Field(default=10, ge=0)

    # Test-only fault injection (refused in production): `exit_before_enqueue` kills the API
    # process right after a submit commits and before it enqueues, as a crash would.
    fault_injection: Literal["", "exit_before_enqueue"] = ""

    @property
    def webhook_retry_delays(self) -> list[float]:
        return [float(part) for part in self.webhook_retry_schedule.split(",") if part.strip()]

    @property
    def failover_order(self) -> list[str]:
        return [name.strip() for name in self.backend_failover_order.split(",") if name.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [
            origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()
        ]

    @property
    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.parse(self.egress_allowlist)

    @property
    def static_gpu_nodes(self) -> list[tuple[str, int]]:
        """`gpu_nodes` as (url, capacity) pairs; capacity 1 unless given as `URL=N`."""
        nodes = []
        for part in self.gpu_nodes.split(","):
            url, _, capacity = part.strip().partition("=")
            if url:
                nodes.append((url.rstrip("/"), int(capacity) if capacity.strip() else 1))
        return nodes

    @field_validator("redis_url")
    @classmethod
    def _redis_url_well_formed(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("gpu_nodes")
    @classmethod
    def _gpu_nodes_well_formed(cls, value: str) -> str:
        for part in value.split(","):
            url, _, capacity = part.strip().partition("=")
            if not url:
                continue
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"a GPU node must be an http(s) URL, got {url!r}")
            if capacity.strip() and (not capacity.strip().isdigit() or int(capacity) < 1):
                raise ValueError(f"a GPU node's capacity must be a positive integer: {part!r}")
        return value

    @field_validator(
        "admin_token",
        "segmind_api_key",
        "public_base_url",
        "node_token",
        "storage_url",
        "s3_endpoint_url",
        "public_output_base_url",
        "database_listen_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `RELIGHT_ADMIN_TOKEN=` in a .env file or compose means "not set", not "".
        return None if value == "" else value

    @model_validator(mode="after")
    def _refuse_credentials_for_any_origin(self) -> Settings:
        # Any site could then act with a signed-in visitor's cookies.
        if self.cors_allow_credentials and "*" in self.cors_origin_list:
            raise ValueError(
                "RELIGHT_CORS_ALLOW_CREDENTIALS is refused with RELIGHT_CORS_ORIGINS=*"
            )
        return self

    @model_validator(mode="after")
    def _refuse_listen_through_a_transaction_pooler(self) -> Settings:
        # LISTEN through a transaction pooler registers on whichever server connection the
        # statement borrowed: no notification would ever reach the auth cache.
        if (
            self.database_pooler == "transaction"
            and self.database_listen_url is None
            and self.auth_cache_s > 0
        ):
            raise ValueError(
                "RELIGHT_DATABASE_POOLER=transaction needs RELIGHT_DATABASE_LISTEN_URL (a direct "
                "connection for the auth cache's LISTEN), or RELIGHT_AUTH_CACHE_S=0"
            )
        return self

    @model_validator(mode="after")
    def _refuse_development_secret_in_production(self) -> Settings:
        if self.environment == "production" and (
            not self.secret_key or self.secret_key == DEVELOPMENT_SECRET
        ):
            raise ValueError("RELIGHT_SECRET_KEY must be set to a real secret in production")
        if self.environment == "production" and self.fault_injection:
            raise ValueError("RELIGHT_FAULT_INJECTION is for tests and refused in production")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
