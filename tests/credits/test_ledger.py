"""The credit ledger under load and races: reservations, charges, refunds, the in-flight cap.

Everything runs against the real Postgres and Redis: concurrent submits go through the ASGI
app, finished jobs through the real worker (or a JobRunner wired like it), and every test ends
with `clean_state`'s check that each balance equals the sum of its ledger entries.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.errors import InvalidImage, InvalidParameter
from relight.core.models import CreditEntry, CreditKind, Job, JobStatus, Tenant, TenantStatus
from relight.core.params import RelightParams, output_size
from relight.core.storage import FileSystemStorage
from relight.credits.pricing import DEFAULT_OUTPUT_PIXELS, price
from relight.credits.service import (
    LedgerDiscrepancy,
    audit_ledger,
    charge_credits,
    grant_credits,
    refund_credits,
)
from relight.jobs import repository
from relight.jobs.execution import JobRunner
from relight.tenants.schemas import LimitsUpdate
from relight.tenants.service import set_limits, set_tenant_status
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.helpers import assert_no_server_errors, cancel, get_record, png_bytes, submit

Sessions = async_sessionmaker[AsyncSession]

START = 1000
DEFAULT_PRICE = 10
SMALL_PNG_BASE64 = base64.b64encode(png_bytes((64, 80), (180, 90, 60))).decode()
# A request the classic engine renders in a blink: one 256×256 image at 10 steps.
FAST: dict[str, Any] = {"width": 256, "height": 256, "highres_scale": 1, "steps": 10}
# Limits so high that only credits (or the in-flight cap under test) can refuse a submit.
UNLIMITED_RATE: dict[str, int] = {"requests_per_minute": 1_000_000, "burst": 10_000}


def body(**overrides: Any) -> dict[str, Any]:
    """A valid request (Segmind's defaults unless overridden) with a small inline PNG."""
    return {"prompt": "cat, warm window light", "subject_image": SMALL_PNG_BASE64, **overrides}


def params(**overrides: Any) -> RelightParams:
    return RelightParams(prompt="cat, warm window light", **overrides)


async def set_tenant_limits(sessionmaker: Sessions, tenant: TenantKey, **limits: int) -> None:
    async with sessionmaker() as session, session.begin():
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        await set_limits(session, row, LimitsUpdate(**limits))


async def tenant_row(sessionmaker: Sessions, tenant: TenantKey) -> Tenant:
    async with sessionmaker() as session:
        row = await session.get(Tenant, tenant.tenant_id)
    assert row is not None
    return row


async def ledger(
    sessionmaker: Sessions, tenant: TenantKey, job_id: uuid.UUID | str | None = None
) -> list[CreditEntry]:
    """The tenant's entries, oldest first; only one job's when `job_id` is given."""
    query = select(CreditEntry).where(CreditEntry.tenant_id == tenant.tenant_id)
    if job_id is not None:
        query = query.where(CreditEntry.job_id == uuid.UUID(str(job_id)))
    async with sessionmaker() as session:
        return list((await session.scalars(query.order_by(CreditEntry.id))).all())


async def jobs_of(sessionmaker: Sessions, tenant: TenantKey) -> list[Job]:
    async with sessionmaker() as session:
        query = select(Job).where(Job.tenant_id == tenant.tenant_id).order_by(Job.id)
        return list((await session.scalars(query)).all())


def kinds(entries: list[CreditEntry]) -> Counter[str]:
    return Counter(entry.kind for entry in entries)


def total(entries: list[CreditEntry]) -> int:
    return sum(entry.amount for entry in entries)


async def assert_settled(
    sessionmaker: Sessions, tenant: TenantKey, *, balance: int, active_jobs: int
) -> None:
    """The tenant's balance, its ledger sum and its in-flight count are as expected."""
    row = await tenant_row(sessionmaker, tenant)
    assert (row.credit_balance, row.active_jobs) == (balance, active_jobs)
    assert total(await ledger(sessionmaker, tenant)) == balance


@pytest.fixture
async def bare_runner(
    settings: Settings, sessionmaker: Sessions, redis: ArqRedis
) -> AsyncIterator[JobRunner]:
    """A JobRunner wired as the worker's startup wires it, but with no backend at all."""
    async with httpx.AsyncClient(follow_redirects=True, max_redirects=3) as http:
        yield JobRunner(
            settings=settings,
            sessionmaker=sessionmaker,
            storage=FileSystemStorage(settings.storage_dir),
            redis=redis,
            enqueuer=redis,
            http=http,
            backends={},
        )


# --- Must show 1: concurrent submits never spend more than the balance --------------------------


async def test_100_concurrent_submits_spend_exactly_the_balance_and_no_more(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: Sessions,
    settings: Settings,
    run_worker: RunWorker,
) -> None:
    assert price(params(), settings.credits_per_default_image) == DEFAULT_PRICE
    tenant = await make_tenant("thrifty", credits=10 * DEFAULT_PRICE)
    await set_tenant_limits(sessionmaker, tenant, max_in_flight=1000, **UNLIMITED_RATE)

    with assert_no_server_errors(client):
        responses = await asyncio.gather(
            *(client.post("/v2/ic-light", headers=tenant.headers, json=body()) for _ in range(100))
        )

    assert Counter(response.status_code for response in responses) == {202: 10, 406: 90}
    accepted = {r.json()["request_id"] for r in responses if r.status_code == 202}
    assert len(accepted) == 10
    assert all(r.json()["credits_reserved"] == DEFAULT_PRICE for r in responses if r.is_success)
    for refused in (r for r in responses if r.status_code == 406):
        error = refused.json()
        assert error["code"] == "insufficient_credits", error
        assert error["required"] == DEFAULT_PRICE
        assert 0 <= error["available"] < DEFAULT_PRICE

    await assert_settled(sessionmaker, tenant, balance=0, active_jobs=10)
    entries = await ledger(sessionmaker, tenant)
    assert kinds(entries) == {"grant": 1, "reserve": 10}
    reserves = [entry for entry in entries if entry.kind == CreditKind.RESERVE]
    assert {str(entry.job_id) for entry in reserves} == accepted
    assert all(entry.amount == -DEFAULT_PRICE for entry in reserves)
    # Each reservation saw the one before it: the balances after them are 90, 80, …, 0.
    assert sorted(entry.balance_after for entry in reserves) == list(range(0, 100, 10))
    jobs = await jobs_of(sessionmaker, tenant)
    assert {str(job.id) for job in jobs} == accepted
    assert all(job.status == JobStatus.QUEUED for job in jobs)
    # Refused requests left nothing behind, not even their input image.
    stored = sorted(
        p.name for p in (settings.storage_dir / "inputs" / str(tenant.tenant_id)).iterdir()
    )
    assert stored == sorted(accepted)

    await run_worker()

    await assert_settled(sessionmaker, tenant, balance=0, active_jobs=0)
    entries = await ledger(sessionmaker, tenant)
    assert kinds(entries) == {"grant": 1, "reserve": 10, "charge": 10}
    charges = [entry for entry in entries if entry.kind == CreditKind.CHARGE]
    assert {str(entry.job_id) for entry in charges} == accepted
    assert all(entry.amount == 0 for entry in charges)
    jobs = await jobs_of(sessionmaker, tenant)
    assert all(job.status == JobStatus.SUCCEEDED for job in jobs)
    assert all(job.credits_charged == DEFAULT_PRICE for job in jobs)

    broke = await client.post("/v2/ic-light", headers=tenant.headers, json=body())
    assert broke.status_code == 406
    assert (broke.json()["required"], broke.json()["available"]) == (DEFAULT_PRICE, 0)


# --- Must show 2: refunded exactly once, charged exactly once -----------------------------------


async def test_a_failed_job_is_refunded_once_when_the_failure_path_runs_twice_concurrently(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    bare_runner: JobRunner,
    sessionmaker: Sessions,
    settings: Settings,
) -> None:
    request_ids = [await submit(client, tenant, body(**FAST)) for _ in range(5)]
    cost = price(params(**FAST), settings.credits_per_default_image)
    await assert_settled(sessionmaker, tenant, balance=START - 5 * cost, active_jobs=5)
    claimed: list[Job] = []
    for request_id in request_ids:
        async with sessionmaker() as session, session.begin():
            job = await repository.claim(session, uuid.UUID(request_id), settings.lease_s)
        assert job is not None
        claimed.append(job)

    error = InvalidImage("the subject image could not be decoded")
    outcomes = await asyncio.gather(
        *(bare_runner._after_failed_attempt(job, error, {}) for job in claimed for _ in range(2))
    )

    assert Counter(outcome.status for outcome in outcomes) == {JobStatus.FAILED: 5, None: 5}
    await assert_settled(sessionmaker, tenant, balance=START, active_jobs=0)
    for request_id in request_ids:
        record = await get_record(client, tenant, request_id)
        assert (record["status"], record["attempts"]) == ("FAILED", 1)
        assert record["error_code"] == "invalid_image"
        assert record["credits"] == {"reserved": cost, "charged": 0}
        entries = await ledger(sessionmaker, tenant, request_id)
        assert kinds(entries) == {"reserve": 1, "refund": 1}
        refund = next(entry for entry in entries if entry.kind == CreditKind.REFUND)
        assert (refund.amount, refund.reason) == (cost, "invalid_image")
        assert total(entries) == 0


async def test_refunding_a_job_a_second_time_is_refused_by_the_unique_index(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    bare_runner: JobRunner,
    sessionmaker: Sessions,
) -> None:
    # With no backend the run fails for good (backend_unavailable) and refunds; a second run
    # racing it finds nothing to claim.
    failed = await submit(client, tenant, body(**FAST))
    outcomes = await asyncio.gather(
        bare_runner.run(uuid.UUID(failed)), bare_runner.run(uuid.UUID(failed))
    )
    assert sorted(str(outcome.status) for outcome in outcomes) == ["None", "failed"]
    assert (await get_record(client, tenant, failed))["error_code"] == "backend_unavailable"
    cost = (await get_record(client, tenant, failed))["credits"]["reserved"]
    # Another job in flight, so that a second refund cannot trip the active_jobs ≥ 0 CHECK
    # first: what must stop it is the one-refund-per-job index.
    await submit(client, tenant, body(**FAST))
    await assert_settled(sessionmaker, tenant, balance=START - cost, active_jobs=1)

    with pytest.raises(IntegrityError, match="uq_credit_entry_job_id_kind"):
        async with sessionmaker() as session, session.begin():
            await refund_credits(session, tenant.tenant_id, uuid.UUID(failed), cost, "again")

    await assert_settled(sessionmaker, tenant, balance=START - cost, active_jobs=1)
    assert kinds(await ledger(sessionmaker, tenant, failed)) == {"reserve": 1, "refund": 1}


async def test_a_canceled_queued_job_is_refunded_once_even_when_canceled_twice_at_once(
    client: httpx.AsyncClient, tenant: TenantKey, sessionmaker: Sessions
) -> None:
    request_id = await submit(client, tenant, body())
    await assert_settled(sessionmaker, tenant, balance=START - DEFAULT_PRICE, active_jobs=1)

    first, second = await asyncio.gather(
        cancel(client, tenant, request_id), cancel(client, tenant, request_id)
    )

    assert first["status"] == second["status"] == "CANCELED"
    await assert_settled(sessionmaker, tenant, balance=START, active_jobs=0)
    entries = await ledger(sessionmaker, tenant, request_id)
    assert kinds(entries) == {"reserve": 1, "refund": 1}
    refund = next(entry for entry in entries if entry.kind == CreditKind.REFUND)
    assert (refund.amount, refund.reason, refund.balance_after) == (
        DEFAULT_PRICE,
        "canceled",
        START,
    )
    assert total(entries) == 0


async def test_a_succeeded_job_is_charged_exactly_once_and_never_refunded(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    sessionmaker: Sessions,
) -> None:
    request_id = await submit(client, tenant, body(**FAST))
    await run_worker()
    await run_worker()  # nothing left to do: it must not settle again

    record = await get_record(client, tenant, request_id)
    assert record["status"] == "COMPLETED"
    cost = record["credits"]["reserved"]
    assert record["credits"]["charged"] == cost > 0
    entries = await ledger(sessionmaker, tenant, request_id)
    assert kinds(entries) == {"reserve": 1, "charge": 1}
    charge = next(entry for entry in entries if entry.kind == CreditKind.CHARGE)
    assert (charge.amount, charge.balance_after) == (0, START - cost)
    assert total(entries) == -cost
    await assert_settled(sessionmaker, tenant, balance=START - cost, active_jobs=0)

    # A second charge is refused (another job keeps active_jobs above 0, so it is the unique
    # index that refuses it, not the active_jobs ≥ 0 CHECK).
    await submit(client, tenant, body(**FAST))
    job_id = uuid.UUID(request_id)
    with pytest.raises(IntegrityError, match="uq_credit_entry_job_id_kind"):
        async with sessionmaker() as session, session.begin():
            await charge_credits(session, tenant.tenant_id, job_id, reserved=cost, cost=cost)
    assert kinds(await ledger(sessionmaker, tenant, request_id)) == {"reserve": 1, "charge": 1}
    await assert_settled(sessionmaker, tenant, balance=START - 2 * cost, active_jobs=1)


# --- Must show 4: the in-flight cap under concurrent submits ------------------------------------


async def test_the_in_flight_cap_holds_under_concurrent_submits(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: Sessions,
    settings: Settings,
    run_worker: RunWorker,
) -> None:
    await set_tenant_limits(sessionmaker, tenant, max_in_flight=3, **UNLIMITED_RATE)
    cost = price(params(**FAST), settings.credits_per_default_image)

    with assert_no_server_errors(client):
        responses = await asyncio.gather(
            *(
                client.post("/v2/ic-light", headers=tenant.headers, json=body(**FAST))
                for _ in range(20)
            )
        )

    assert Counter(response.status_code for response in responses) == {202: 3, 429: 17}
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["code"] == "too_many_jobs"
        assert refused.json()["limit"] == 3
        assert refused.headers["Retry-After"] == "1"
    await assert_settled(sessionmaker, tenant, balance=START - 3 * cost, active_jobs=3)
    assert len(await jobs_of(sessionmaker, tenant)) == 3
    assert kinds(await ledger(sessionmaker, tenant)) == {"grant": 1, "reserve": 3}

    await run_worker()
    await assert_settled(sessionmaker, tenant, balance=START - 3 * cost, active_jobs=0)

    again = await asyncio.gather(
        *(client.post("/v2/ic-light", headers=tenant.headers, json=body(**FAST)) for _ in range(3))
    )
    assert [response.status_code for response in again] == [202, 202, 202]
    over = await client.post("/v2/ic-light", headers=tenant.headers, json=body(**FAST))
    assert over.status_code == 429
    assert over.json()["code"] == "too_many_jobs"
    await assert_settled(sessionmaker, tenant, balance=START - 6 * cost, active_jobs=3)


# --- suspension ---------------------------------------------------------------------------------


async def test_a_suspended_tenant_cannot_submit_and_pays_nothing(
    client: httpx.AsyncClient, make_tenant: MakeTenant, sessionmaker: Sessions
) -> None:
    tenant = await make_tenant("dormant", credits=START)
    broke = await make_tenant("dormant-and-broke", credits=0)
    for who in (tenant, broke):
        async with sessionmaker() as session, session.begin():
            row = await session.get(Tenant, who.tenant_id)
            assert row is not None
            await set_tenant_status(session, row, TenantStatus.SUSPENDED)

    for who in (tenant, broke):
        response = await client.post("/v2/ic-light", headers=who.headers, json=body())
        # Suspension is reported before (and instead of) the missing credits.
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "tenant_suspended"
        assert await jobs_of(sessionmaker, who) == []
    await assert_settled(sessionmaker, tenant, balance=START, active_jobs=0)
    assert kinds(await ledger(sessionmaker, tenant)) == {"grant": 1}
    assert await ledger(sessionmaker, broke) == []

    async with sessionmaker() as session, session.begin():
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        await set_tenant_status(session, row, TenantStatus.ACTIVE)
    await submit(client, tenant, body())
    await assert_settled(sessionmaker, tenant, balance=START - DEFAULT_PRICE, active_jobs=1)


# --- grants and adjustments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "reason", "kind", "field"),
    [
        pytest.param(-5, "refund by hand", CreditKind.GRANT, "amount", id="negative-grant"),
        pytest.param(0, "nothing", CreditKind.GRANT, "amount", id="zero-grant"),
        pytest.param(0, "nothing", CreditKind.ADJUST, "amount", id="zero-adjust"),
        pytest.param(50, "   ", CreditKind.GRANT, "reason", id="blank-reason"),
        pytest.param(-1001, "too much", CreditKind.ADJUST, "amount", id="adjust-below-zero"),
    ],
)
async def test_a_bad_grant_or_adjustment_is_refused_and_leaves_no_entry(
    tenant: TenantKey,
    sessionmaker: Sessions,
    amount: int,
    reason: str,
    kind: CreditKind,
    field: str,
) -> None:
    with pytest.raises(InvalidParameter) as refused:
        async with sessionmaker() as session, session.begin():
            await grant_credits(session, tenant.tenant_id, amount, reason=reason, kind=kind)

    assert refused.value.status_code == 422
    assert refused.value.extra["field"] == field
    await assert_settled(sessionmaker, tenant, balance=START, active_jobs=0)
    assert kinds(await ledger(sessionmaker, tenant)) == {"grant": 1}


async def test_grants_and_adjustments_move_the_balance_with_one_entry_each(
    tenant: TenantKey, sessionmaker: Sessions
) -> None:
    async with sessionmaker() as session, session.begin():
        granted = await grant_credits(session, tenant.tenant_id, 250, reason="top-up")
        taken = await grant_credits(
            session, tenant.tenant_id, -(START + 250), reason="zeroed", kind=CreditKind.ADJUST
        )
    assert (granted.kind, granted.amount, granted.balance_after) == ("grant", 250, START + 250)
    assert (taken.kind, taken.balance_after, taken.reason) == ("adjust", 0, "zeroed")
    await assert_settled(sessionmaker, tenant, balance=0, active_jobs=0)

    with pytest.raises(ValueError, match="belong to jobs"):
        async with sessionmaker() as session, session.begin():
            await grant_credits(session, tenant.tenant_id, 5, reason="x", kind=CreditKind.REFUND)
    assert kinds(await ledger(sessionmaker, tenant)) == {"grant": 2, "adjust": 1}


# --- audit --------------------------------------------------------------------------------------


async def admin_audit(settings: Settings, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`relight-admin credits audit` against the test database (in `cwd`: no stray .env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIGHT_")}
    env["RELIGHT_DATABASE_URL"] = settings.database_url
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "relight-admin"),
        "credits",
        "audit",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return subprocess.CompletedProcess([], process.returncode, stdout.decode(), stderr.decode())


async def shift_balance(sessionmaker: Sessions, tenant: TenantKey, delta: int) -> None:
    """Change a balance behind the ledger's back, as a stray raw UPDATE would."""
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text("UPDATE tenant SET credit_balance = credit_balance + :delta WHERE id = :id"),
            {"delta": delta, "id": tenant.tenant_id},
        )


async def test_the_audit_reports_a_balance_tampered_with_behind_the_ledgers_back(
    make_tenant: MakeTenant, sessionmaker: Sessions, settings: Settings, tmp_path: Path
) -> None:
    honest = await make_tenant("honest", credits=300)
    tampered = await make_tenant("tampered", credits=300)
    async with sessionmaker() as session:
        assert await audit_ledger(session) == []

    await shift_balance(sessionmaker, tampered, +7)
    try:
        async with sessionmaker() as session:
            found = await audit_ledger(session)
        assert found == [
            LedgerDiscrepancy(
                tenant_id=tampered.tenant_id, tenant_name="tampered", balance=307, ledger_sum=300
            )
        ]
        assert honest.tenant_id not in {d.tenant_id for d in found}

        # The operator's command reports it too, as JSON, and exits 1.
        audit = await admin_audit(settings, tmp_path)
        assert audit.stdout, f"no report; the command crashed:\n{audit.stderr[-600:]}"
        assert json.loads(audit.stdout) == {
            "ok": False,
            "discrepancies": [
                {
                    "tenant_id": str(tampered.tenant_id),
                    "tenant": "tampered",
                    "balance": 307,
                    "ledger_sum": 300,
                }
            ],
        }
        assert audit.returncode == 1
        # A ledger sum is a number of credits like the balance: an int (SUM over a bigint
        # column comes back from Postgres as NUMERIC, a Decimal, which JSON cannot carry).
        assert all(type(d.ledger_sum) is int for d in found), found
    finally:
        # Put it back, so the fixture's own audit after the test finds nothing.
        await shift_balance(sessionmaker, tampered, -7)

    # The CHECK stops a balance below zero, whoever writes it.
    with pytest.raises(IntegrityError, match="credit_balance_non_negative"):
        await shift_balance(sessionmaker, honest, -301)

    async with sessionmaker() as session:
        assert await audit_ledger(session) == []
        assert await session.scalar(select(func.sum(CreditEntry.amount))) == 600
    clean = await admin_audit(settings, tmp_path)
    assert (clean.returncode, clean.stderr) == (0, "")
    assert json.loads(clean.stdout) == {"ok": True, "discrepancies": []}


# --- pricing ------------------------------------------------------------------------------------


def test_the_default_request_costs_a_round_ten(settings: Settings) -> None:
    default = params()
    assert default.output_size == (768, 960)
    assert default.output_size[0] * default.output_size[1] == DEFAULT_OUTPUT_PIXELS
    assert settings.credits_per_default_image == DEFAULT_PRICE
    assert price(default, DEFAULT_PRICE) == DEFAULT_PRICE
    assert isinstance(price(default, DEFAULT_PRICE), int)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"number_of_images": 4}, 40, id="four-images"),
        pytest.param({"steps": 50}, 20, id="fifty-steps"),
        pytest.param({"steps": 5}, 2, id="five-steps"),
        pytest.param({"highres_scale": 1.0}, math.ceil(10 * 512 * 640 / (768 * 960)), id="no-hr"),
        # 1024×1024 at highres 1.5 is 1536×1536 out: 10 × 1536² / (768·960) = 32 exactly.
        pytest.param({"width": 1024, "height": 1024}, 32, id="1024-square"),
        pytest.param(
            {"width": 1024, "height": 1024, "number_of_images": 3}, 96, id="1024-square-x3"
        ),
        pytest.param({"width": 256, "height": 256, "highres_scale": 1, "steps": 1}, 1, id="min"),
    ],
)
def test_price_follows_pixels_steps_and_images(overrides: dict[str, Any], expected: int) -> None:
    request = params(**overrides)
    width, height = output_size(request.width, request.height, request.highres_scale)
    units = width * height / DEFAULT_OUTPUT_PIXELS * request.steps / 25 * request.number_of_images
    assert expected == max(1, math.ceil(round(DEFAULT_PRICE * units, 6)))
    assert price(request, DEFAULT_PRICE) == expected


@pytest.mark.parametrize(
    ("field", "values"),
    [
        pytest.param("width", [256, 384, 512, 768, 1024], id="width"),
        pytest.param("height", [256, 512, 640, 1024], id="height"),
        pytest.param("highres_scale", [1.0, 1.25, 1.5, 2.0, 3.0], id="highres"),
        pytest.param("steps", [1, 10, 25, 50, 100], id="steps"),
        pytest.param("number_of_images", [1, 2, 4, 8, 12], id="images"),
    ],
)
def test_price_never_falls_as_a_request_grows(field: str, values: list[Any]) -> None:
    prices = [price(params(**{field: value}), DEFAULT_PRICE) for value in values]
    assert prices == sorted(prices)
    assert prices[-1] > prices[0]


def test_the_price_per_default_image_is_configurable() -> None:
    assert price(params(), 25) == 25
    assert price(params(number_of_images=2), 25) == 50
    assert price(params(width=1024, height=1024, steps=100, number_of_images=12), 0) == 0
