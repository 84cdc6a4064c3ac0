"""`relight-admin credits …` and `tenant set-limits|suspend|resume`, run as the installed console
script against the test database (issue 3; must show 6: `credits audit`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from tests.cli_runner import Result, admin_env, run_admin
from tests.conftest import MakeTenant, TenantKey
from tests.helpers import SMALL_PNG_BASE64, balance_of

pytestmark = pytest.mark.slow

SUBMIT_BODY = {"prompt": "cat, soft window light", "subject_image": SMALL_PNG_BASE64}


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
def cli(settings: Settings, clean_state: None, tmp_path: Path) -> Cli:
    """Runs `relight-admin ARGS…` against the (migrated, emptied) test database."""
    env = admin_env()
    env["RELIGHT_DATABASE_URL"] = settings.database_url

    async def run(*args: str) -> Result:
        return await run_admin(*args, env=env, cwd=tmp_path)  # cwd: no stray .env file

    return run


async def ledger_sum(engine: AsyncEngine, tenant: TenantKey) -> int:
    async with engine.connect() as connection:
        value = await connection.scalar(
            text("select coalesce(sum(amount), 0) from credit_entry where tenant_id = :id"),
            {"id": tenant.tenant_id},
        )
    return int(value or 0)


async def test_grant_adjust_and_show(
    cli: Cli, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("globex", credits=100)

    grant = (await cli("credits", "grant", "globex", "25", "--reason", "x")).json()
    assert (grant["kind"], grant["amount"], grant["balance_after"]) == ("grant", 25, 125)
    assert grant["reason"] == "x"
    assert grant["request_id"] is None
    assert grant["id"]
    assert grant["created_at"]

    # `--` lets a negative amount through as an argument; the tenant may be named by id.
    adjust = (
        await cli("credits", "adjust", str(tenant.tenant_id), "--reason", "y", "--", "-5")
    ).json()
    assert (adjust["kind"], adjust["amount"], adjust["balance_after"]) == ("adjust", -5, 120)
    assert adjust["reason"] == "y"

    shown = (await cli("credits", "show", "globex", "--last", "2")).json()

    assert shown["tenant"] == "globex"
    assert shown["balance"] == 120
    assert [entry["id"] for entry in shown["entries"]] == [adjust["id"], grant["id"]]
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in shown["entries"]] == [
        ("adjust", -5, 120),
        ("grant", 25, 125),
    ]
    assert await balance_of(engine, tenant.tenant_id) == 120 == await ledger_sum(engine, tenant)


async def test_refused_movements_change_nothing(
    cli: Cli, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("globex", credits=100)

    below_zero, zero_adjust, blank_reason, unknown, zero_grant, no_reason = await asyncio.gather(
        cli("credits", "adjust", "globex", "--reason", "too much", "--", "-101"),
        cli("credits", "adjust", "globex", "--reason", "nothing", "0"),
        cli("credits", "grant", "globex", "5", "--reason", "   "),
        cli("credits", "grant", "nobody", "5", "--reason", "x"),
        cli("credits", "grant", "globex", "0", "--reason", "x"),
        cli("credits", "grant", "globex", "5"),
    )

    for result in (below_zero, zero_adjust, blank_reason):
        assert result.error()["code"] == "validation_error"
    assert "negative" in below_zero.error()["error"]
    assert unknown.error()["code"] == "tenant_not_found"
    # Usage errors (typer's own checks) exit 2 before touching the database.
    assert zero_grant.code == 2
    assert no_reason.code == 2
    assert await balance_of(engine, tenant.tenant_id) == 100
    shown = (await cli("credits", "show", "globex")).json()
    assert [(e["kind"], e["amount"]) for e in shown["entries"]] == [("grant", 100)]


async def test_an_amount_beyond_the_ledger_range_is_a_validation_error(
    cli: Cli, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    """The ledger holds bigints; a bigger amount is the operator's typo, not a database outage."""
    tenant = await make_tenant("globex", credits=100)

    result = await cli("credits", "grant", "globex", str(2**63), "--reason", "typo")

    error = result.error()
    assert error["code"] == "validation_error", error
    assert await balance_of(engine, tenant.tenant_id) == 100


async def test_audit_reports_a_tenant_whose_balance_is_not_its_ledger(
    cli: Cli, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tampered = await make_tenant("globex", credits=100)
    await make_tenant("initech", credits=40)

    clean = await cli("credits", "audit")
    assert clean.code == 0, clean.stderr
    assert json.loads(clean.stdout) == {"ok": True, "discrepancies": []}

    async with engine.begin() as connection:
        await connection.execute(
            text("update tenant set credit_balance = credit_balance + 7 where id = :id"),
            {"id": tampered.tenant_id},
        )
    try:
        found = await cli("credits", "audit")
    finally:
        # Put it back, so the ledger check after the test holds.
        async with engine.begin() as connection:
            await connection.execute(
                text("update tenant set credit_balance = credit_balance - 7 where id = :id"),
                {"id": tampered.tenant_id},
            )

    assert found.code == 1, (found.stdout, found.stderr)
    assert found.stdout, found.stderr[-400:]
    assert json.loads(found.stdout) == {
        "ok": False,
        "discrepancies": [
            {
                "tenant_id": str(tampered.tenant_id),
                "tenant": "globex",
                "balance": 107,
                "ledger_sum": 100,
            }
        ],
    }
    restored = await cli("credits", "audit")
    assert restored.code == 0, restored.stdout
    assert json.loads(restored.stdout)["ok"] is True


async def test_set_limits_suspend_and_resume(
    cli: Cli, tenant: TenantKey, client: httpx.AsyncClient
) -> None:
    limited = (await cli("tenant", "set-limits", "acme", "--burst", "5")).json()
    assert limited["name"] == "acme"
    # Only the burst changed; the other limits keep their defaults.
    assert limited["limits"] == {"requests_per_minute": 120, "burst": 5, "max_in_flight": 20}
    read = await client.get("/v2/account", headers=tenant.headers)
    assert read.status_code == 200
    assert read.json()["limits"]["burst"] == 5
    assert read.headers["RateLimit-Policy"] == '"tenant";q=5;w=3'

    nothing, zero = await asyncio.gather(
        cli("tenant", "set-limits", "acme"), cli("tenant", "set-limits", "acme", "--burst", "0")
    )
    assert nothing.error()["code"] == "validation_error"
    assert zero.code == 2

    suspended = (await cli("tenant", "suspend", "acme")).json()
    assert suspended["status"] == "suspended"
    refused = await client.post("/v2/ic-light", headers=tenant.headers, json=SUBMIT_BODY)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "tenant_suspended"
    # Reads still answer while suspended.
    assert (await client.get("/v2/requests", headers=tenant.headers)).status_code == 200

    resumed = (await cli("tenant", "resume", "acme")).json()
    assert resumed["status"] == "active"
    accepted = await client.post("/v2/ic-light", headers=tenant.headers, json=SUBMIT_BODY)
    assert accepted.status_code == 202, accepted.text
