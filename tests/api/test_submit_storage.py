"""An inline subject is stored only once the request is paid for, inside the submit's
transaction: when storing it fails, the job and its reservation are undone with it."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from relight.core.config import Settings
from tests.conftest import TenantKey
from tests.helpers import balance_of, job_count, small_body


async def test_a_failed_store_leaves_no_paid_job_without_its_input(
    settings: Settings, tenant: TenantKey, engine: AsyncEngine, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the storage directory should be")
    application = create_app(settings.model_copy(update={"storage_dir": blocked}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            response = await api.post("/v2/ic-light", headers=tenant.headers, json=small_body())

    assert response.status_code == 500, response.text
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == 1000
