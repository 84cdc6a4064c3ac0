"""S3-compatible storage against a real S3 HTTP server (moto) on 127.0.0.1, and a deployment
whose api and worker share nothing but the object store."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.storage import (
    FileSystemStorage,
    PresigningStorage,
    S3Storage,
    StoredObjectMissing,
    open_storage,
)
from tests.conftest import TenantKey, example_bytes
from tests.fakes.s3 import S3Server, s3_server
from tests.fakes.segmind import relight_client, run_burst_worker
from tests.helpers import get_record
from worker.tasks import sweep

BUCKET = "relight-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def store(s3: S3Server) -> S3Storage:
    return S3Storage(BUCKET, f"unit-{uuid.uuid4().hex[:8]}", endpoint_url=s3.endpoint_url)


async def test_objects_are_put_read_and_deleted(store: S3Storage) -> None:
    await store.put("outputs/t/j/0.webp", b"first")
    await store.put("outputs/t/j/0.webp", b"second")  # replaced
    assert await store.get("outputs/t/j/0.webp") == b"second"
    await store.delete("outputs/t/j/0.webp")
    with pytest.raises(StoredObjectMissing):
        await store.get("outputs/t/j/0.webp")
    await store.delete("outputs/t/j/0.webp")  # deleting a missing key is fine


async def test_keys_live_under_the_prefix(s3: S3Server, store: S3Storage) -> None:
    await store.put("inputs/t/j", b"subject")
    assert s3.keys(BUCKET, store.prefix) == [f"{store.prefix}/inputs/t/j"]


async def test_a_presigned_url_reads_the_object_without_credentials(store: S3Storage) -> None:
    await store.put("outputs/t/j/1.png", b"\x89PNG...")
    url = store.presigned_url("outputs/t/j/1.png", 600)
    assert "X-Amz-Signature=" in url
    assert "X-Amz-Expires=600" in url
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert (response.status_code, response.content) == (200, b"\x89PNG...")


def test_a_public_base_url_replaces_presigning(s3: S3Server) -> None:
    cdn = S3Storage(
        BUCKET, "p", endpoint_url=s3.endpoint_url, public_base_url="https://cdn.example/img/"
    )
    assert cdn.presigned_url("outputs/a/0.webp", 60) == "https://cdn.example/img/p/outputs/a/0.webp"


def test_the_storage_url_picks_the_backend(
    settings: Settings, s3: S3Server, tmp_path: Path
) -> None:
    assert isinstance(open_storage(settings), FileSystemStorage)
    on_disk = open_storage(settings.model_copy(update={"storage_url": f"file://{tmp_path}"}))
    assert isinstance(on_disk, FileSystemStorage)
    assert on_disk.root == tmp_path.resolve()
    in_bucket = open_storage(
        settings.model_copy(
            update={"storage_url": f"s3://{BUCKET}/a/b", "s3_endpoint_url": s3.endpoint_url}
        )
    )
    assert isinstance(in_bucket, S3Storage)
    assert isinstance(in_bucket, PresigningStorage)
    assert (in_bucket.bucket, in_bucket.prefix) == (BUCKET, "a/b")
    for bad in ("ftp://x/y", "s3:///prefix-only"):
        with pytest.raises(ValueError, match="RELIGHT_STORAGE_URL"):
            open_storage(settings.model_copy(update={"storage_url": bad}))


async def test_api_and_worker_share_nothing_but_the_object_store(
    settings: Settings,
    s3: S3Server,
    tenant: TenantKey,
    tmp_path: Path,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
) -> None:
    prefix = f"deploy-{uuid.uuid4().hex[:8]}"
    shared = {"storage_url": f"s3://{BUCKET}/{prefix}", "s3_endpoint_url": s3.endpoint_url}
    # Each process gets a folder of its own that it must never need: neither is ever created.
    api = settings.model_copy(update={**shared, "storage_dir": tmp_path / "api-host"})
    worker = settings.model_copy(update={**shared, "storage_dir": tmp_path / "worker-host"})
    body = {
        "prompt": "a cat, sunset",
        "subject_image": base64.b64encode(example_bytes()).decode(),
        "width": 256,
        "height": 320,
        "highres_scale": 1.0,
    }
    async with relight_client(api) as client:
        response = await client.post("/v2/ic-light", headers=tenant.headers, json=body)
        assert response.status_code == 202, response.text
        request_id = response.json()["request_id"]
        await run_burst_worker(worker)
        record = await get_record(client, tenant, request_id)
        assert record["status"] == "COMPLETED", record
        [output] = record["outputs"]
        # The record's URL is the store's own, presigned: clients download from the bucket.
        assert output["url"].startswith(f"{s3.endpoint_url}/{BUCKET}/{prefix}/outputs/")
        async with httpx.AsyncClient() as outside:
            direct = await outside.get(output["url"])
        through_api = await client.get(
            f"/v2/requests/{request_id}/outputs/0", headers=tenant.headers
        )
        assert direct.status_code == through_api.status_code == 200
        assert direct.content == through_api.content
        assert direct.content[:4] == b"RIFF"  # webp, the default format

        # The subject (stored by the api) and the output (stored by the worker).
        assert len(s3.keys(BUCKET, f"{prefix}/inputs/")) == 1
        assert len(s3.keys(BUCKET, f"{prefix}/outputs/")) == 1

        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE job SET finished_at = now() - interval '8 days' WHERE id = :id"),
                {"id": request_id},
            )
        ctx = {
            "sessionmaker": sessionmaker,
            "settings": worker,
            "redis": redis,
            "storage": open_storage(worker),
        }
        counts = await sweep(ctx)
        assert counts["images_expired"] == 2
        assert s3.keys(BUCKET, prefix) == []
        gone = await client.get(f"/v2/requests/{request_id}/outputs/0", headers=tenant.headers)
        assert gone.status_code == 410
    assert not (tmp_path / "api-host").exists()
    assert not (tmp_path / "worker-host").exists()
