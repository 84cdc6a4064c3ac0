"""`GET /v2/usage` (and the admin API's per tenant): requests, images, credits and GPU time by
UTC day, backend or key, whose credit figures equal the ledger exactly; JSON or CSV.

The requests run through the api, the queue, a real worker and a real `relight-node` process
(the classic engine) for the `gpu` backend, so the GPU time is what the worker recorded."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.models import Tenant
from relight.tenants.service import create_api_key
from tests.conftest import MakeTenant, TenantKey
from tests.fakes.segmind import relight_client, run_burst_worker
from tests.helpers import cancel, fast_body, submit
from tests.nodes.processes import NodeProcess, clear_slots, node_process

ADMIN_TOKEN = "usage-admin-token-" + "u" * 24


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"relight:test-usage:{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def gpu_node(
    settings: Settings, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    with node_process(
        "usage-node-1",
        redis_url=settings.redis_url,
        namespace=namespace,
        log_dir=tmp_path_factory.mktemp("usage-node"),
    ) as process:
        yield process


@pytest.fixture
async def config(settings: Settings, redis: Redis, namespace: str) -> AsyncIterator[Settings]:
    yield settings.model_copy(
        update={"gpu_namespace": namespace, "gpu_wait_s": 30.0, "admin_token": ADMIN_TOKEN}
    )
    await clear_slots(redis, namespace)


async def second_key(
    sessionmaker: async_sessionmaker[AsyncSession], tenant: TenantKey
) -> TenantKey:
    async with sessionmaker() as session, session.begin():
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        created = await create_api_key(session, row, "batch")
    return TenantKey(tenant_id=tenant.tenant_id, name=tenant.name, key=created.key)


async def ledger_sums(engine: AsyncEngine, tenant_id: uuid.UUID) -> tuple[int, int]:
    """What the ledger says the tenant's requests took and were given back."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT coalesce(sum(-amount) FILTER (WHERE kind IN ('reserve', 'charge')), 0)"
                    " AS taken, coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0) AS given"
                    " FROM credit_entry WHERE tenant_id = :tenant"
                ),
                {"tenant": tenant_id},
            )
        ).one()
    return int(row.taken), int(row.given)


def usage(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_period(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["period"]: row for row in report["data"]}


@pytest.mark.slow
async def test_usage_by_day_backend_and_key_equals_the_ledger(
    config: Settings,
    gpu_node: NodeProcess,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    tenant = await make_tenant("usage-co", credits=1000)
    other_key = await second_key(sessionmaker, tenant)
    bystander = await make_tenant("someone-else", credits=1000)
    async with relight_client(config) as client:
        await submit(client, tenant, fast_body(backend="local", number_of_images=2))
        await submit(client, tenant, fast_body(backend="gpu"))
        canceled = await submit(client, other_key, fast_body(backend="local"))
        await cancel(client, other_key, canceled)
        await submit(client, bystander, fast_body(backend="local"))
        await run_burst_worker(config)

        taken, given = await ledger_sums(engine, tenant.tenant_id)
        assert taken > 0
        assert given > 0

        reports = {
            group_by: usage(
                await client.get("/v2/usage", params={"group_by": group_by}, headers=tenant.headers)
            )
            for group_by in ("day", "backend", "key")
        }
        for group_by, report in reports.items():
            assert report["group_by"] == group_by
            totals = report["totals"]
            assert totals["credits_charged"] == taken, group_by
            assert totals["credits_refunded"] == given, group_by
            assert totals["credits_net"] == taken - given
            assert sum(row["credits_charged"] for row in report["data"]) == taken
            assert sum(row["credits_refunded"] for row in report["data"]) == given
            assert (totals["requests"], totals["completed"], totals["canceled"]) == (3, 2, 1)
            assert totals["images"] == 3

        today = datetime.now(UTC).date().isoformat()
        assert list(by_period(reports["day"])) == [today]

        backends = by_period(reports["backend"])
        assert set(backends) == {"local", "gpu", "none"}  # none: canceled before it ran
        assert backends["gpu"]["gpu_seconds"] > 0
        assert backends["local"]["gpu_seconds"] == 0
        assert backends["gpu"]["gpu_seconds"] == reports["backend"]["totals"]["gpu_seconds"]
        assert backends["none"]["credits_net"] == 0

        keys = by_period(reports["key"])
        # A key's period is its public prefix (`rl_<prefix>_<secret>`).
        first_prefix, second_prefix = (key.key.split("_")[1] for key in (tenant, other_key))
        assert set(keys) == {first_prefix, second_prefix}
        first, second = keys[first_prefix], keys[second_prefix]
        assert (first["requests"], first["completed"], first["images"]) == (2, 2, 3)
        assert (second["requests"], second["canceled"], second["credits_net"]) == (1, 1, 0)

        as_csv = await client.get(
            "/v2/usage", params={"group_by": "key", "format": "csv"}, headers=tenant.headers
        )
        assert as_csv.status_code == 200
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert {row["period"] for row in rows} == set(keys)
        assert sum(int(row["credits_charged"]) for row in rows) == taken
        assert sum(int(row["credits_refunded"]) for row in rows) == given
        # The same CSV as an operation of its own, for clients generated from the spec.
        csv_operation = await client.get(
            "/v2/usage.csv", params={"group_by": "key"}, headers=tenant.headers
        )
        assert csv_operation.status_code == 200
        assert csv_operation.headers["content-type"].startswith("text/csv")
        assert csv_operation.text == as_csv.text
        admin_csv = await client.get(
            f"/admin/v1/tenants/{tenant.name}/usage.csv",
            params={"group_by": "key"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert admin_csv.status_code == 200
        assert admin_csv.text == as_csv.text

        admin = usage(
            await client.get(
                f"/admin/v1/tenants/{tenant.name}/usage",
                params={"group_by": "key"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        )
        assert admin["totals"] == reports["key"]["totals"]


async def test_a_window_that_ended_before_the_requests_shows_nothing(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await submit(client, tenant, fast_body())
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    report = usage(await client.get("/v2/usage", params={"to": yesterday}, headers=tenant.headers))
    assert report["data"] == []
    assert report["totals"]["requests"] == 0
    assert report["to"].startswith(datetime.now(UTC).date().isoformat())  # `to`'s day included

    today = usage(await client.get("/v2/usage", headers=tenant.headers))
    assert today["totals"]["requests"] == 1
    assert today["totals"]["credits_charged"] > 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "last tuesday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "2026-12-07", "to": "2026-12-01"}, "from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "from"),
        ({"group_by": "week"}, "group_by"),
        ({"format": "xml"}, "format"),
    ],
)
async def test_bad_usage_parameters_are_a_422_naming_the_parameter(
    client: httpx.AsyncClient, tenant: TenantKey, params: dict[str, str], field: str
) -> None:
    response = await client.get("/v2/usage", params=params, headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(field)
    if field != "format":
        as_csv = await client.get("/v2/usage.csv", params=params, headers=tenant.headers)
        assert as_csv.status_code == 422, as_csv.text
        assert as_csv.json()["field"] == field
