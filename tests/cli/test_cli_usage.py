"""`relight-admin usage`, run as the installed console script against the test database: it
prints what `GET /admin/v1/tenants/{tenant}/usage` answers for the same window (JSON, or with
`--csv` the route's `usage.csv`), and refuses bad dates or a bad `--group-by` with exit 2 and
one line, before touching the database."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from tests.cli_runner import Result, admin_env, run_admin
from tests.conftest import MakeTenant, TenantKey
from tests.fakes.segmind import relight_client, run_burst_worker
from tests.helpers import balance_of, cancel, fast_body, submit
from tests.usage.test_usage import ledger_sums

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "cli-usage-admin-token-" + "c" * 24
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CREDITS = 1000

Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
def cli(settings: Settings, clean_state: None, tmp_path: Path) -> Cli:
    """Runs `relight-admin ARGS…` against the (migrated, emptied) test database, or the
    database `database_url` names."""
    env = admin_env()

    async def run(*args: str, database_url: str = settings.database_url) -> Result:
        # cwd: no stray .env file
        return await run_admin(
            *args, env={**env, "RELIGHT_DATABASE_URL": database_url}, cwd=tmp_path
        )

    return run


@pytest.fixture
def config(settings: Settings) -> Settings:
    """The test settings with the admin API on."""
    return settings.model_copy(update={"admin_token": ADMIN_TOKEN})


def day(offset: int) -> str:
    return (datetime.now(UTC) + timedelta(days=offset)).date().isoformat()


async def admin_usage(
    client: httpx.AsyncClient, tenant: str, params: dict[str, str], *, csv: bool = False
) -> httpx.Response:
    path = f"/admin/v1/tenants/{tenant}/usage{'.csv' if csv else ''}"
    response = await client.get(path, params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response


async def test_usage_prints_what_the_admin_route_answers(
    cli: Cli, config: Settings, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("usage-co", credits=CREDITS)
    created = (await cli("key", "create", "usage-co", "--label", "second")).json()
    second = TenantKey(tenant_id=tenant.tenant_id, name=tenant.name, key=created["key"])
    async with relight_client(config) as client:
        await submit(client, tenant, fast_body(backend="local", number_of_images=2))
        await submit(client, tenant, fast_body(backend="local"))
        await cancel(client, second, await submit(client, second, fast_body(backend="local")))
        await run_burst_worker(config)
        taken, given = await ledger_sums(engine, tenant.tenant_id)
        assert taken > given > 0
        assert await balance_of(engine, tenant.tenant_id) == CREDITS - (taken - given)

        window = {"from": day(-1), "to": day(1)}
        reports: dict[str, dict[str, Any]] = {}
        for group_by in ("day", "backend", "key"):
            params = {**window, "group_by": group_by}
            options = ["--from", window["from"], "--to", window["to"], "--group-by", group_by]
            printed = (await cli("usage", "usage-co", *options)).json()
            answered = (await admin_usage(client, "usage-co", params)).json()
            assert printed == answered, group_by
            reports[group_by] = printed
            totals = printed["totals"]
            assert (totals["credits_charged"], totals["credits_refunded"]) == (taken, given)
            assert (totals["requests"], totals["completed"], totals["canceled"]) == (3, 2, 1)
            assert totals["images"] == 3

            # The tenant named by id; the periods as the route's CSV, byte for byte.
            as_csv = await cli("usage", str(tenant.tenant_id), *options, "--csv")
            assert as_csv.code == 0, as_csv.stderr
            route_csv = await admin_usage(client, str(tenant.tenant_id), params, csv=True)
            assert as_csv.stdout == route_csv.text
            assert as_csv.stdout.splitlines()[0].startswith("period,requests,completed,")
            assert len(as_csv.stdout.splitlines()) == 1 + len(printed["data"])

        prefixes = {key.key.split("_")[1] for key in (tenant, second)}
        assert {row["period"] for row in reports["key"]["data"]} == prefixes
        assert {row["period"] for row in reports["backend"]["data"]} == {"local", "none"}

        # A window that ended before the requests: nothing, on both.
        before = {"from": day(-3), "to": day(-1)}
        empty = await cli("usage", "usage-co", "--from", before["from"], "--to", before["to"])
        assert empty.json() == (await admin_usage(client, "usage-co", before)).json()
        assert empty.json()["data"] == []
        assert empty.json()["totals"]["requests"] == 0

        # The default window (the last 30 days, up to now) holds every request too.
        default = (await cli("usage", "usage-co")).json()
        assert default["group_by"] == "day"
        assert default["totals"] == (await admin_usage(client, "usage-co", {})).json()["totals"]
        assert default["totals"]["credits_net"] == taken - given


def one_line_error(result: Result) -> dict[str, Any]:
    """The error of a command refused as a usage error: exit 2, one JSON line on stderr."""
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    error: dict[str, Any] = json.loads(result.stderr)
    return error


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--from", "last tuesday"], "--from: 'last tuesday' is not an ISO date"),
        (["--to", "2026-13-01"], "--to: '2026-13-01' is not an ISO date"),
        (["--from", "2026-12-07", "--to", "2026-12-01"], "--from: must be before to"),
        (["--from", "2024-01-01", "--to", "2026-01-01"], "--from: the window is at most 366"),
        (["--group-by", "week"], "--group-by: 'week' is not one of day, backend, key"),
    ],
)
async def test_bad_dates_or_group_by_exit_2_before_the_database(
    cli: Cli, make_tenant: MakeTenant, options: list[str], named: str
) -> None:
    await make_tenant("usage-co")
    refused = await cli("usage", "usage-co", *options)
    error = one_line_error(refused)
    assert error["code"] == "validation_error"
    assert error["error"].startswith(named), error

    # Refused before any connection: the same with no database to reach answers the same.
    nowhere = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
    assert one_line_error(await cli("usage", "usage-co", *options, database_url=nowhere)) == error


async def test_an_unknown_tenant_is_refused(cli: Cli) -> None:
    error = (await cli("usage", "nobody")).error()
    assert error["code"] == "tenant_not_found"
    assert "nobody" in error["error"]
