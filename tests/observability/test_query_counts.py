"""SQL statements per request (issue 8, must show 2): a submit and a status poll run a fixed,
small number of statements, and neither they nor a listing grow with the jobs or outputs in
the table (no N+1). Counted with a `before_cursor_execute` listener on the app's engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from api.app import create_app
from relight.core.config import Settings
from tests.conftest import RunWorker, TenantKey
from tests.fakes.image_server import ImageServer
from tests.helpers import fast_body, get_status, submit

# What a submit without an Idempotency-Key runs once its API key is in the auth cache: one
# statement (the tenant's conditional UPDATE, its ledger entry and the job INSERT, as
# data-modifying CTEs). An inline subject (these tests' default) runs it in a transaction, as
# the input is stored before the commit (BEGIN and COMMIT are not cursor statements).
SUBMIT_STATEMENTS = 1
# With a key: the lookup of the key, and a savepoint around that statement.
IDEMPOTENT_SUBMIT_STATEMENTS = SUBMIT_STATEMENTS + 3
# A URL subject (nothing to store): the same statement in autocommit, so not even a BEGIN or
# a COMMIT; with a key, the key's lookup first and no savepoint (one statement, nothing to undo).
URL_SUBMIT_STATEMENTS = 1
URL_IDEMPOTENT_SUBMIT_STATEMENTS = URL_SUBMIT_STATEMENTS + 1
# What a status poll of a queued job runs: the key lookup, the job, its queue position.
STATUS_STATEMENTS = 3
# How long a key stays in the auth cache here: far longer than any of these tests runs, so
# that what they count is a steady request's, however slowly a loaded machine runs the steps
# between two counts (with the default 5 s, a slow run counted the key's lookup again).
AUTH_CACHE_S = 3600.0


@pytest.fixture
async def app(settings: Settings, clean_state: None) -> AsyncIterator[FastAPI]:
    application = create_app(settings.model_copy(update={"auth_cache_s": AUTH_CACHE_S}))
    async with application.router.lifespan_context(application):
        yield application


# What the driver's query log sees of a transaction that SQLAlchemy's cursor event never saw.
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")


@contextmanager
def count_statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements the app's engine sends while the block runs: through SQLAlchemy's
    cursor (its `before_cursor_execute` event) or on asyncpg's connection of the engine's pool
    directly (the driver's query log, as a submit's reservation runs in autocommit). BEGIN and
    COMMIT, which the driver logs and the cursor never sees, are not counted."""
    statements: list[str] = []
    engine = app.state.relight.engine.sync_engine
    logging_on: list[Any] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def record_logged(query: Any) -> None:
        if not query.query.lstrip().upper().startswith(TRANSACTION_CONTROL):
            statements.append(query.query)

    def log_driver(dbapi_connection: Any, *args: Any) -> None:
        driver = dbapi_connection.driver_connection
        if driver not in logging_on:
            driver.add_query_logger(record_logged)
            logging_on.append(driver)

    event.listen(engine, "before_cursor_execute", record)
    event.listen(engine, "checkout", log_driver)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
        event.remove(engine, "checkout", log_driver)
        for driver in logging_on:
            driver.remove_query_logger(record_logged)


@contextmanager
def count_transactions(app: FastAPI) -> Iterator[list[bool]]:
    """One entry per transaction the app's engine begins while the block runs: whether it
    really sent BEGIN to Postgres (False for an autocommit connection)."""
    begun: list[bool] = []
    engine = app.state.relight.engine.sync_engine

    def record(conn: Any) -> None:
        begun.append(conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT")

    event.listen(engine, "begin", record)
    try:
        yield begun
    finally:
        event.remove(engine, "begin", record)


async def submit_counted(
    app: FastAPI, client: httpx.AsyncClient, tenant: TenantKey
) -> tuple[str, list[str]]:
    with count_statements(app) as statements:
        request_id = await submit(client, tenant, fast_body())
    return request_id, statements


async def idempotent_submit_counted(
    app: FastAPI, client: httpx.AsyncClient, tenant: TenantKey, key: str
) -> list[str]:
    with count_statements(app) as statements:
        response = await client.post(
            "/v2/ic-light",
            headers={**tenant.headers, "Idempotency-Key": key},
            json=fast_body(),
        )
    assert response.status_code == 202, response.text
    return statements


async def status_counted(
    app: FastAPI, client: httpx.AsyncClient, tenant: TenantKey, request_id: str
) -> tuple[dict[str, Any], list[str]]:
    with count_statements(app) as statements:
        status = await get_status(client, tenant, request_id)
    return status, statements


async def list_counted(
    app: FastAPI, client: httpx.AsyncClient, tenant: TenantKey
) -> tuple[list[dict[str, Any]], list[str]]:
    with count_statements(app) as statements:
        response = await client.get("/v2/requests?limit=100", headers=tenant.headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data, statements


async def test_submit_and_status_poll_run_a_fixed_number_of_statements(
    app: FastAPI, client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker
) -> None:
    # Warm up: the first use of the key looks it up, records its last use (once a minute at
    # most) and caches it, and the pool opens its connections; none of it is what a steady
    # submit costs.
    await submit(client, tenant, fast_body())
    await run_worker()

    first_id, first_submit = await submit_counted(app, client, tenant)
    first_status, first_poll = await status_counted(app, client, tenant, first_id)
    assert first_status["status"] == "QUEUED"
    assert len(first_submit) == SUBMIT_STATEMENTS, first_submit
    assert len(first_poll) == STATUS_STATEMENTS, first_poll
    first_keyed = await idempotent_submit_counted(app, client, tenant, "order-1")
    assert len(first_keyed) == IDEMPOTENT_SUBMIT_STATEMENTS, first_keyed
    await run_worker()

    # 16 more jobs, each with an output, then two more queued.
    for _ in range(16):
        await submit(client, tenant, fast_body())
    await run_worker()
    last_keyed = await idempotent_submit_counted(app, client, tenant, "order-2")
    last_id, last_submit = await submit_counted(app, client, tenant)
    last_status, last_poll = await status_counted(app, client, tenant, last_id)

    assert last_status["status"] == "QUEUED"
    assert last_status["queue_position"] == 1  # behind the keyed one
    assert len(last_submit) == len(first_submit), last_submit
    assert len(last_keyed) == len(first_keyed), last_keyed
    assert len(last_poll) == len(first_poll), last_poll


async def test_a_listing_does_not_grow_with_the_jobs_and_outputs_it_shows(
    app: FastAPI, client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker
) -> None:
    await submit(client, tenant, fast_body())
    await run_worker()
    one, one_statements = await list_counted(app, client, tenant)
    assert [len(record["outputs"]) for record in one] == [1]

    for _ in range(9):
        await submit(client, tenant, fast_body(number_of_images=2))
    await run_worker()
    for _ in range(10):
        await submit(client, tenant, fast_body())
    await run_worker()
    twenty, twenty_statements = await list_counted(app, client, tenant)

    assert len(twenty) == 20
    assert sum(len(record["outputs"]) for record in twenty) == 1 + 9 * 2 + 10
    assert len(twenty_statements) == len(one_statements), twenty_statements


async def test_a_submit_by_url_is_one_statement_outside_any_transaction(
    app: FastAPI, client: httpx.AsyncClient, tenant: TenantKey, image_server: ImageServer
) -> None:
    body = fast_body(subject_image=image_server.url("/cat.png"))
    await submit(client, tenant, body)  # warm up: the key's lookup, then it is cached

    with count_statements(app) as statements, count_transactions(app) as transactions:
        await submit(client, tenant, body)
    assert len(statements) == URL_SUBMIT_STATEMENTS, statements
    assert statements[0].startswith("WITH moved AS"), statements
    assert not any(transactions), transactions  # no BEGIN, no COMMIT

    for key in ("url-1", "url-2"):
        with count_statements(app) as statements, count_transactions(app) as transactions:
            response = await client.post(
                "/v2/ic-light", headers={**tenant.headers, "Idempotency-Key": key}, json=body
            )
        assert response.status_code == 202, response.text
        assert len(statements) == URL_IDEMPOTENT_SUBMIT_STATEMENTS, statements
        assert not any(transactions), transactions
