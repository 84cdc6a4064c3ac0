"""Relighting onto a background (IC-Light fbc) through the public API: the same input rules as
the subject, the routing rule (only GPU nodes with the fbc model), and a job that runs through
the api, the queue, the worker and a real `relight-node` process with the tiny fbc model."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from inference.iclight.weights import Variant
from inference.tiny_model import write_tiny_model
from relight.core.config import Settings
from tests.api.test_validation import assert_error, assert_invalid_field, body
from tests.conftest import TenantKey, example_bytes
from tests.fakes.segmind import relight_client, run_burst_worker
from tests.helpers import balance_of, get_record, job_count
from tests.nodes.processes import NodeProcess, clear_slots, node_process

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMALL: dict[str, Any] = {"width": 256, "height": 320, "steps": 3, "highres_scale": 1.0}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _astronaut() -> bytes:
    return (EXAMPLES / "astronaut.png").read_bytes()


async def test_an_uploaded_background_source_without_a_background_image_is_a_422(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    jobs = await job_count(engine)
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json=body(background_source="Use Flipped Background Image"),
    )
    payload = assert_invalid_field(response, "background_image")
    assert "needs a background_image" in payload["error"]
    assert await job_count(engine) == jobs


@pytest.mark.parametrize(
    ("value", "status", "code", "words"),
    [
        ("not an image at all!", 400, "invalid_image", "background_image is neither"),
        (_b64(b"GIF89a" + b"\0" * 64), 400, "invalid_image", "background_image"),
        (_b64(_astronaut()[:400]), 400, "invalid_image", "background_image is a truncated"),
        ("data:image/png,abc", 400, "invalid_image", "background_image: a data URL"),
        ("http://10.0.0.1/scene.png", 422, None, "background_image"),
        ("ftp://example.com/scene.png", 422, None, "background_image"),
    ],
    ids=["garbage", "gif", "truncated-png", "data-url-not-base64", "private-address", "ftp"],
)
async def test_a_bad_background_gets_the_errors_a_bad_subject_gets(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    engine: AsyncEngine,
    value: str,
    status: int,
    code: str | None,
    words: str,
) -> None:
    before = await balance_of(engine, tenant.tenant_id)
    response = await client.post(
        "/v2/ic-light", headers=tenant.headers, json=body(background_image=value)
    )
    payload = assert_error(response, status, code)
    assert words in payload["error"], payload
    assert await balance_of(engine, tenant.tenant_id) == before


async def test_a_background_larger_than_the_limit_is_a_413(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    files = {
        "subject_image": ("cat.png", example_bytes(), "image/png"),
        "background_image": ("big.png", b"\x89PNG" + b"\0" * settings.max_input_bytes, "image/png"),
    }
    response = await client.post(
        "/v2/ic-light", headers=tenant.headers, data={"prompt": "a cat"}, files=files
    )
    payload = assert_error(response, 413)
    assert "background_image" in payload["error"]


@pytest.mark.parametrize("backend", ["local", "segmind"])
async def test_backends_without_the_background_model_are_refused_with_a_403(
    client: httpx.AsyncClient, tenant: TenantKey, backend: str
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json=body(background_image=_b64(_astronaut()), backend=backend),
    )
    payload = assert_error(response, 403, "background_not_served")
    assert f"backend {backend!r} cannot relight onto a background" in payload["error"]


async def test_auto_without_a_gpu_node_that_serves_backgrounds_is_a_403(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    jobs = await job_count(engine)
    response = await client.post(
        "/v2/ic-light", headers=tenant.headers, json=body(background_source="Ambient")
    )
    payload = assert_error(response, 403, "background_not_served")
    assert "iclight_sd15_fbc.safetensors" in payload["error"]
    assert await job_count(engine) == jobs


# -- through a real node ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"relight:test-background:{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def fbc_node(
    settings: Settings, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    model = write_tiny_model(tmp_path_factory.mktemp("fbc") / "model", variants=(Variant.FBC,))
    with node_process(
        "fbc-1",
        redis_url=settings.redis_url,
        namespace=namespace,
        log_dir=tmp_path_factory.mktemp("fbc-node"),
        model_dir=model,
        startup_timeout_s=120,
    ) as process:
        yield process


@pytest.fixture
async def clean_namespace(redis: Redis, namespace: str) -> AsyncIterator[str]:
    yield namespace
    await clear_slots(redis, namespace)


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


@pytest.mark.slow
async def test_a_background_job_runs_through_the_api_queue_worker_and_an_fbc_node(
    settings: Settings,
    clean_namespace: str,
    fbc_node: NodeProcess,
    tenant: TenantKey,
    engine: AsyncEngine,
) -> None:
    assert fbc_node.health()["backgrounds"] is True
    config = settings.model_copy(update={"gpu_namespace": clean_namespace, "gpu_wait_s": 30.0})
    fields = {"prompt": "a cat in space", "seed": "7", **{k: str(v) for k, v in SMALL.items()}}
    files = {
        "subject_image": ("cat.png", example_bytes(), "image/png"),
        "background_image": ("space.png", _astronaut(), "image/png"),
    }
    before = await balance_of(engine, tenant.tenant_id)
    async with relight_client(config) as client:
        uploaded = await client.post(
            "/v2/ic-light", headers=tenant.headers, data=fields, files=files
        )
        assert uploaded.status_code == 202, uploaded.text
        lit = await client.post(
            "/v2/ic-light",
            headers=tenant.headers,
            json={
                **SMALL,
                "prompt": "a cat",
                "subject_image": _b64(example_bytes()),
                "background_source": "Left Light",
                "number_of_images": 2,
            },
        )
        assert lit.status_code == 202, lit.text
        await run_burst_worker(config)

        record = await get_record(client, tenant, uploaded.json()["request_id"])
        assert record["status"] == "COMPLETED", (
            record["error"],
            record["error_code"],
            record["backend"],
        )
        assert record["params"]["background_source"] == "Use Background Image"
        assert record["background_image"] is None  # sent inline
        assert (record["backend"]["used"], record["backend"]["node"]) == ("gpu", "fbc-1")
        [output] = record["outputs"]
        image = await client.get(output["url"])
        assert _size(image.content) == (256, 320)

        two = await get_record(client, tenant, lit.json()["request_id"])
        assert two["status"] == "COMPLETED", (two["error"], two["error_code"], two["backend"])
        assert [(o["width"], o["height"]) for o in two["outputs"]] == [(256, 320)] * 2
    charged = record["credits"]["charged"] + two["credits"]["charged"]
    assert await balance_of(engine, tenant.tenant_id) == before - charged
