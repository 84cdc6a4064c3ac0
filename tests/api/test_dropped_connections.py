"""Postgres drops the API's pooled connections (a restart, a failover): the API checks no
connection before use (that costs three round trips per request), so the first request to
meet a dropped one answers 503 with Retry-After, never a 500, and the pool is renewed."""

from __future__ import annotations

import asyncpg
import httpx

from tests.conftest import PG_SERVER, TEST_DATABASE, TenantKey
from tests.fakes.image_server import ImageServer
from tests.helpers import small_body

KILL_OTHERS = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = $1 AND pid <> pg_backend_pid()
"""


# The same, sparing the connections that LISTEN (the auth cache's, whose loss empties the
# cache): a cached key's submit then meets the dropped connection first in its reservation.
KILL_POOLED = KILL_OTHERS + " AND query NOT ILIKE 'LISTEN%'"


async def drop_every_connection(kill: str = KILL_OTHERS) -> int:
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        killed: int = await connection.fetchval(kill, TEST_DATABASE)
        return killed
    finally:
        await connection.close()


async def test_dropped_connections_cost_at_most_one_503_then_the_api_recovers(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await dropped_connections_cost_at_most_one_503(client, tenant, small_body())


async def test_a_submit_by_url_meets_dropped_connections_with_at_most_one_503(
    client: httpx.AsyncClient, tenant: TenantKey, image_server: ImageServer
) -> None:
    # Its reservation runs in autocommit on the driver's connection, not through SQLAlchemy;
    # with the key still cached, that is where the first submit meets a dropped connection.
    by_url = small_body(subject_image=image_server.url("/cat.png"))
    await dropped_connections_cost_at_most_one_503(client, tenant, by_url, kill=KILL_POOLED)


async def dropped_connections_cost_at_most_one_503(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    body: dict[str, object],
    kill: str = KILL_OTHERS,
) -> None:
    for _ in range(3):  # the pool now holds connections
        response = await client.post("/v2/ic-light", headers=tenant.headers, json=body)
        assert response.status_code == 202, response.text
    assert await drop_every_connection(kill) > 0

    statuses = []
    for _ in range(6):
        response = await client.post("/v2/ic-light", headers=tenant.headers, json=body)
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.json()["code"] == "database_unavailable"
            assert response.headers["Retry-After"]
    assert 500 not in statuses
    assert statuses.count(503) <= 1
    assert statuses[-4:] == [202] * 4
    listing = await client.get("/v2/requests", headers=tenant.headers)
    assert listing.status_code == 200
