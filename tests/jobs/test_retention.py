"""Retention: stored images of old finished requests are deleted; records stay; 410 after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.storage import FileSystemStorage
from tests.conftest import RunWorker, TenantKey, example_base64
from worker.tasks import sweep


def files_of(root: Path, request_id: str) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and request_id in str(path)]


async def test_old_images_are_deleted_and_their_downloads_answer_410(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
) -> None:
    old = (
        await client.post(
            "/v2/ic-light",
            headers=tenant.headers,
            json={"prompt": "cat", "subject_image": example_base64(), "width": 256, "height": 320},
        )
    ).json()["request_id"]
    recent = (
        await client.post(
            "/v2/ic-light",
            headers=tenant.headers,
            json={"prompt": "dog", "subject_image": example_base64(), "width": 256, "height": 320},
        )
    ).json()["request_id"]
    await run_worker()
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE job SET finished_at = now() - interval '8 days' WHERE id = :id"),
            {"id": old},
        )
    old_files = await asyncio.to_thread(files_of, Path(settings.storage_dir), old)
    assert len(old_files) == 2  # the input and one output

    ctx = {
        "sessionmaker": sessionmaker,
        "settings": settings,
        "redis": redis,
        "storage": FileSystemStorage(settings.storage_dir),
    }
    counts = await sweep(ctx)

    assert counts["images_expired"] == 2
    assert await asyncio.to_thread(files_of, Path(settings.storage_dir), old) == []
    record = (await client.get(f"/v2/requests/{old}", headers=tenant.headers)).json()
    assert record["status"] == "COMPLETED"
    [output] = record["outputs"]
    assert output["expired_at"] is not None
    download = await client.get(f"/v2/requests/{old}/outputs/0", headers=tenant.headers)
    assert download.status_code == 410
    assert download.json()["code"] == "output_expired"

    kept = await client.get(f"/v2/requests/{recent}/outputs/0", headers=tenant.headers)
    assert kept.status_code == 200
    assert (await sweep(ctx))["images_expired"] == 0
