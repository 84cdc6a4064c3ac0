"""The submit's reservation (`relight.credits.reservation.reserve_credits`): a job built with
only the columns every submit sets takes the newer columns' defaults (batch, lane, deadline,
the key that submitted it), on the driver's autocommit path and in a transaction alike
(`bench/submit_overhead.py` builds its jobs this way); and a reservation whose answer the
network lost is found where Postgres wrote it, once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.db import autocommit_engine, create_engine, create_sessionmaker
from relight.core.ids import uuid7
from relight.core.models import CreditEntry, CreditKind, Job, JobStatus
from relight.credits.reservation import reserve_credits
from tests.conftest import TEST_DATABASE, MakeTenant
from tests.fakes.pg_relay import PgRelay


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


async def test_a_reservation_whose_answer_is_lost_is_found_where_postgres_wrote_it(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    make_tenant: MakeTenant,
) -> None:
    # Postgres commits the job with its reservation and the connection dies before the answer
    # arrives: the statement's outcome is unknown to the api. Running it again would clash with
    # the job it wrote (same id); the job is there, so the submit is answered with it, reserved
    # once (before, the api answered 503 for a job it had created and charged).
    tenant = await make_tenant("answer-lost", credits=100)
    direct = make_url(settings.database_url)
    assert direct.host is not None
    assert direct.port is not None
    async with PgRelay(direct.host, direct.port) as relay:
        relayed = settings.model_copy(update={"database_url": relay.url(TEST_DATABASE)})
        engine = create_engine(relayed, max_overflow=0, pre_ping=False)
        try:
            autocommit = create_sessionmaker(autocommit_engine(engine, relayed))
            async with autocommit() as session:  # a connection in the pool, statement prepared
                await reserve_credits(session, minimal_job(tenant.tenant_id), 10)
            lost = minimal_job(tenant.tenant_id)
            lost.params = {"prompt": "the answer to this one is lost"}
            relay.lose_answer_to(b"the answer to this one is lost")
            async with autocommit() as session:
                reserved = await reserve_credits(session, lost, 10)
            assert relay.cuts == 1
        finally:
            await engine.dispose()

    assert reserved.id == lost.id
    assert reserved.status == JobStatus.QUEUED.value
    async with sessionmaker() as session:
        jobs = (await session.scalars(select(Job).where(Job.tenant_id == tenant.tenant_id))).all()
        reserves = await session.scalar(
            select(func.count()).where(
                CreditEntry.job_id == lost.id, CreditEntry.kind == CreditKind.RESERVE.value
            )
        )
        balance = await session.scalar(
            select(func.sum(CreditEntry.amount)).where(CreditEntry.tenant_id == tenant.tenant_id)
        )
    assert len(jobs) == 2
    assert lost.id in {job.id for job in jobs}
    assert reserves == 1
    assert balance == 100 - 20
