"""Every error body names a `request_id`, never null: the request (job) the error is about when
there is one, else the exchange's `x-request-id`. A synchronous submit that times out answers
the job's id in `x-request-id` too, as its success does (the exchange's id in x-correlation-id)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from relight.core.config import Settings
from tests.conftest import RunWorker, TenantKey
from tests.helpers import fast_body


def assert_names_the_exchange(response: httpx.Response) -> None:
    request_id = response.json()["request_id"]
    assert request_id is not None, response.text
    assert request_id == response.headers["x-request-id"], response.text


async def test_a_401_names_the_exchange(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/requests", headers={"x-api-key": "rl_not_a_key"})
    assert response.status_code == 401
    assert_names_the_exchange(response)


async def test_a_presented_request_id_is_the_one_named(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/requests", headers={"x-request-id": "trace-401-a"})
    assert response.status_code == 401
    assert response.json()["request_id"] == "trace-401-a"


async def test_a_422_names_the_exchange(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.post(
        "/v2/ic-light", headers=tenant.headers, json=fast_body(steps=100_000)
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "steps"
    assert_names_the_exchange(response)


async def test_a_malformed_request_id_is_not_echoed(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.get("/v2/requests/not-a-uuid", headers=tenant.headers)
    assert response.status_code == 422
    assert_names_the_exchange(response)


async def test_a_404_names_the_unknown_request(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    unknown = uuid.uuid4()
    response = await client.get(f"/v2/requests/{unknown}", headers=tenant.headers)
    assert response.status_code == 404
    assert response.json()["request_id"] == str(unknown)
    # An unknown route concerns no request: the exchange's id.
    missing = await client.get("/v2/nowhere", headers=tenant.headers)
    assert missing.status_code == 404
    assert_names_the_exchange(missing)


async def test_an_idempotency_key_conflict_names_an_id(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "order-77"}
    first = await client.post("/v2/ic-light", headers=headers, json=fast_body())
    assert first.status_code == 202, first.text

    reused = await client.post("/v2/ic-light", headers=headers, json=fast_body(steps=12))

    assert reused.status_code == 422, reused.text
    assert reused.json()["code"] == "idempotency_key_reused"
    assert_names_the_exchange(reused)


async def test_a_409_names_the_request_it_conflicts_with(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker
) -> None:
    submitted = await client.post("/v2/ic-light", headers=tenant.headers, json=fast_body())
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["request_id"]
    await run_worker()

    response = await client.post(f"/v2/requests/{request_id}/cancel", headers=tenant.headers)

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "not_cancelable"
    assert response.json()["request_id"] == request_id


@pytest.fixture
async def impatient_client(
    settings: Settings, clean_state: None
) -> AsyncIterator[httpx.AsyncClient]:
    # No worker runs: a synchronous submit waits this long for nothing.
    app = create_app(settings.model_copy(update={"sync_timeout_s": 0.5}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_a_sync_timeout_names_the_job_in_its_body_and_header(
    impatient_client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await impatient_client.post(
        "/v1/ic-light",
        headers={**tenant.headers, "x-request-id": "sync-trace-504"},
        json=fast_body(),
    )

    assert response.status_code == 504, response.text
    body = response.json()
    assert body["code"] == "timeout"
    job_id = body["request_id"]
    assert str(uuid.UUID(job_id)) == job_id
    assert body["status_url"].endswith(f"/v2/requests/{job_id}/status")
    assert response.headers["x-request-id"] == job_id
    assert response.headers["x-correlation-id"] == "sync-trace-504"
