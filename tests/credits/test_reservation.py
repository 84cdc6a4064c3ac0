"""The submit's reservation (`relight.credits.reservation.reserve_credits`) for a job built with
only the columns every submit sets: the columns added since (batch, lane, deadline, the key
that submitted it) take their own defaults, on the driver's autocommit path and in a
transaction alike (`bench/submit_overhead.py` builds its jobs this way)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.db import autocommit_engine, create_sessionmaker
from relight.core.ids import uuid7
from relight.core.models import CreditEntry, CreditKind, Job, JobStatus
from relight.credits.reservation import reserve_credits
from tests.conftest import MakeTenant


def minimal_job(tenant_id: uuid.UUID) -> Job:
    created_at = datetime.now(UTC)
    return Job(
        id=uuid7(created_at),
        created_at=created_at,
        tenant_id=tenant_id,
        status=JobStatus.QUEUED.value,
        params={"prompt": "a minimal job"},
        input_url="https://example.com/cat.png",
        input_storage_key=None,
        background_url=None,
        background_storage_key=None,
        seed=1,
        backend_requested="auto",
        credits_reserved=10,
        idempotency_key=None,
        request_hash=None,
        webhook_url=None,
        webhook_events=[],
        http_request_id=None,
    )


async def test_a_job_without_the_newer_columns_is_reserved_with_their_defaults(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    make_tenant: MakeTenant,
) -> None:
    tenant = await make_tenant("minimal", credits=100)
    in_autocommit = minimal_job(tenant.tenant_id)
    autocommit = create_sessionmaker(autocommit_engine(engine, settings))
    async with autocommit() as session:
        assert await reserve_credits(session, in_autocommit, 10)
    in_transaction = minimal_job(tenant.tenant_id)
    async with sessionmaker() as session, session.begin():
        assert await reserve_credits(session, in_transaction, 10)

    async with sessionmaker() as session:
        jobs = (await session.scalars(select(Job).where(Job.tenant_id == tenant.tenant_id))).all()
        reserves = (
            await session.scalars(
                select(CreditEntry.amount).where(
                    CreditEntry.tenant_id == tenant.tenant_id,
                    CreditEntry.kind == CreditKind.RESERVE.value,
                )
            )
        ).all()
    assert {job.id for job in jobs} == {in_autocommit.id, in_transaction.id}
    for job in jobs:
        assert (job.batch_id, job.priority, job.deadline_at, job.api_key_id) == (
            None,
            "normal",
            None,
            None,
        )
    assert sorted(reserves) == [-10, -10]
