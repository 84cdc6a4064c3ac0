"""Postgres overloaded: while every connection of the api's pool stays in use for longer than
`RELIGHT_DATABASE_POOL_TIMEOUT_S`, a submit and a read answer 503 `database_busy` with
Retry-After (never 500), nothing is reserved or charged, and the same submit is accepted once a
connection is free again."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from relight.core.config import Settings
from tests.conftest import MakeTenant
from tests.helpers import balance_of, job_count, small_body


@dataclass(frozen=True)
class Api:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def engine(self) -> AsyncEngine:
        """The app's own engine: its pool is the one requests take connections from."""
        engine: AsyncEngine = self.app.state.relight.engine
        return engine


@pytest.fixture
async def one_connection_api(settings: Settings, clean_state: None) -> AsyncIterator[Api]:
    """An api app whose pool holds one connection, and gives up waiting for it after 0.5 s."""
    application = create_app(
        settings.model_copy(update={"database_pool_size": 1, "database_pool_timeout_s": 0.5})
    )
    async with application.router.lifespan_context(application):
        # What a client sees, a 500 too, rather than the app's exception.
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(application, client)


async def ledger_entries(engine: AsyncEngine, tenant_id: object) -> list[str]:
    async with engine.connect() as connection:
        kinds = await connection.scalars(
            text("SELECT kind FROM credit_entry WHERE tenant_id = :id ORDER BY id"),
            {"id": tenant_id},
        )
        return list(kinds)


def assert_database_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "database_busy", body
    assert body["error"] == (
        "all database connections are busy (1 in this api process); retry shortly"
    )
    assert body["request_id"] == response.headers["x-request-id"]
    assert int(response.headers["retry-after"]) > 0


async def test_a_busy_pool_answers_503_and_charges_nothing(
    one_connection_api: Api,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = await make_tenant("busy-co", credits=1000)
    client = one_connection_api.client
    submit_headers = {**tenant.headers, "Idempotency-Key": "busy-1"}

    # A long-running request holds the pool's one connection.
    async with one_connection_api.engine.connect() as held:
        await held.execute(text("SELECT 1"))
        with caplog.at_level(logging.WARNING, logger="api.errors"):
            submitted = await client.post("/v2/ic-light", headers=submit_headers, json=small_body())
            read = await client.get("/v2/requests", headers=tenant.headers)

        assert_database_busy(submitted)
        assert_database_busy(read)
        busy_lines = [r for r in caplog.records if r.getMessage().startswith("database busy")]
        assert [r.levelno for r in busy_lines] == [logging.WARNING, logging.WARNING]
        # Nothing reserved, charged or created (read on a connection of the test's own).
        assert await balance_of(engine, tenant.tenant_id) == 1000
        assert await job_count(engine) == 0
        assert await ledger_entries(engine, tenant.tenant_id) == ["grant"]

    # The connection is back in the pool: the same submit is accepted, once, and is not a
    # replay (nothing was recorded under its Idempotency-Key while the pool was busy).
    accepted = await client.post("/v2/ic-light", headers=submit_headers, json=small_body())
    assert accepted.status_code == 202, accepted.text
    assert "Idempotent-Replayed" not in accepted.headers
    price = accepted.json()["credits_reserved"]
    assert price > 0
    assert await balance_of(engine, tenant.tenant_id) == 1000 - price
    assert await job_count(engine) == 1
    assert await ledger_entries(engine, tenant.tenant_id) == ["grant", "reserve"]
    listed = await client.get("/v2/requests", headers=tenant.headers)
    assert listed.status_code == 200, listed.text
    assert [r["request_id"] for r in listed.json()["data"]] == [accepted.json()["request_id"]]


async def test_a_busy_pool_leaves_the_replica_ready(one_connection_api: Api) -> None:
    # Every replica is overloaded alike: taking this one out of the Service would only move its
    # load onto the others. Its connections are out doing work, so Postgres answers: ready,
    # with the pool reported busy.
    client = one_connection_api.client
    async with one_connection_api.engine.connect() as held:
        await held.execute(text("SELECT 1"))
        busy = await client.get("/readyz")
    assert busy.status_code == 200, busy.text
    assert busy.json() == {
        "status": "ready",
        "checks": {"database": "busy: all 1 connections in use", "redis": "ok"},
    }
    idle = await client.get("/readyz")
    assert idle.status_code == 200, idle.text
    assert idle.json()["checks"]["database"] == "ok"
