"""The requests view's filters and one request's full record (issue 19)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.models import Job, WebhookAttempt, WebhookDelivery
from relight.tenants.service import create_tenant
from tests.conftest import MakeTenant, RunWorker
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import fast_body
from tests.ui.conftest import sign_in

ROW = re.compile(r'href="/admin/ui/requests/([0-9a-f-]{36})"')


async def test_requests_filter_by_tenant_status_and_backend(
    ui_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    now = datetime.now(UTC)
    ids: dict[str, uuid.UUID] = {}
    async with sessionmaker() as session, session.begin():
        tenants = {name: (await create_tenant(session, name)).id for name in ("alpha", "beta")}
        for number, (name, tenant, status, backend) in enumerate(
            [
                ("alpha_ok", "alpha", "succeeded", "local"),
                ("alpha_failed", "alpha", "failed", "segmind"),
                ("beta_ok", "beta", "succeeded", "gpu"),
                # Not run yet: filtered by the backend it asked for.
                ("beta_queued", "beta", "queued", "gpu"),
            ]
        ):
            job = Job(
                id=uuid.uuid4(),
                tenant_id=tenants[tenant],
                status=status,
                params={},
                seed=number,
                backend_requested=backend if status == "queued" else "auto",
                backend_used=None if status == "queued" else backend,
                created_at=now - timedelta(minutes=number),
            )
            session.add(job)
            ids[name] = job.id
    await sign_in(ui_client)

    async def listed(**query: str) -> set[uuid.UUID]:
        page = await ui_client.get("/admin/ui/requests", params=query)
        assert page.status_code == 200
        return {uuid.UUID(found) for found in ROW.findall(page.text)}

    assert await listed() == set(ids.values())
    assert await listed(tenant="alpha") == {ids["alpha_ok"], ids["alpha_failed"]}
    assert await listed(status="succeeded") == {ids["alpha_ok"], ids["beta_ok"]}
    assert await listed(backend="gpu") == {ids["beta_ok"], ids["beta_queued"]}
    assert await listed(tenant="beta", status="queued", backend="gpu") == {ids["beta_queued"]}
    assert await listed(tenant="nobody") == set()


async def test_a_request_shows_its_attempts_backend_calls_and_webhook_attempts(
    ui_client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    now = datetime.now(UTC)
    calls = [
        {
            "attempt": 1,
            "backend": "gpu",
            "outcome": "error",
            "error": "node_gone",
            "calls": [{"backend": "gpu", "node": "gpu-a:9000", "outcome": "error",
                       "latency_ms": 12.5, "error": "connection refused"}],
        },
        {
            "attempt": 2,
            "backend": "segmind",
            "outcome": "error",
            "calls": [{"backend": "segmind", "outcome": "error", "status_code": 422,
                       "latency_ms": 80.0}],
        },
    ]  # fmt: skip
    async with sessionmaker() as session, session.begin():
        tenant = await create_tenant(session, "acme")
        job = Job(
            id=uuid.uuid4(),
            tenant_id=tenant.id,
            status="failed",
            params={"prompt": "a lamp at dusk"},
            seed=7,
            backend_requested="auto",
            backend_used="segmind",
            attempts=2,
            backend_calls=calls,
            error_code="invalid_input",
            error_message="the upstream refused the image",
            webhook_url="http://127.0.0.1:9/hook",
            created_at=now - timedelta(minutes=2),
            started_at=now - timedelta(minutes=1),
            finished_at=now,
        )
        session.add(job)
        await session.flush()
        delivery = WebhookDelivery(
            tenant_id=tenant.id,
            job_id=job.id,
            event="completed",
            url="http://127.0.0.1:9/hook",
            status="pending",
            attempts=1,
        )
        session.add(delivery)
        await session.flush()
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                number=1,
                started_at=now,
                duration_ms=31.0,
                status_code=503,
                error="server error",
            )
        )
    await sign_in(ui_client)
    page = await ui_client.get(f"/admin/ui/requests/{job.id}")
    assert page.status_code == 200
    text = page.text
    for shown in [
        "a lamp at dusk",
        "invalid_input",
        "the upstream refused the image",
        "gpu on gpu-a:9000",
        "connection refused",
        "HTTP 422",
        "completed → <code>http://127.0.0.1:9/hook</code>: pending",
        "<td>503</td>",
        "server error",
    ]:
        assert shown in text, shown


async def test_a_failing_batch_webhook_is_listed_with_its_batch_not_a_request_link(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, run_worker: RunWorker
) -> None:
    tenant = await make_tenant("acme")
    with WebhookReceiver() as receiver:
        receiver.script("/down", [Reply(status=503)] * 4)  # every attempt of the schedule
        response = await ui_client.post(
            "/v2/batches",
            headers=tenant.headers,
            json={"requests": [fast_body()], "webhook_url": receiver.url("/down")},
        )
        assert response.status_code == 202, response.text
        batch_id = response.json()["batch_id"]
        await run_worker()  # renders the item, then tries batch.completed until it gives up
        assert len(receiver.received("/down")) == 4
    await sign_in(ui_client)

    page = await ui_client.get("/admin/ui/webhooks")

    assert page.status_code == 200
    [row] = re.findall(r"<tr>\s*<td><a href=\"/admin/ui/tenants/acme\">.*?</tr>", page.text, re.S)
    for shown in (f'batch <span class="mono">{batch_id}</span>', "batch.completed", "HTTP 503"):
        assert shown in row, shown
    assert "failed, no more tries" in row
    assert "/requests/None" not in page.text
    assert ROW.findall(row) == []  # no request link: the delivery is the batch's
