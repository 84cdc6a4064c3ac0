"""Segmind's documented example body, through the real gateway, queue and worker."""

from __future__ import annotations

import io
from typing import Any

import httpx
from PIL import Image

from tests.conftest import RunWorker, TenantKey
from tests.fakes.image_server import ImageServer


def seed_example(subject_url: str) -> dict[str, Any]:
    return {
        "prompt": "cat, photoshoot, 4k",
        "subject_image": subject_url,
        "appended_prompt": "best quality",
        "negative_prompt": "lowres, bad anatomy, bad hands, cropped, worst quality",
        "cfg": 2,
        "width": 512,
        "height": 640,
        "steps": 25,
        "seed": 42,
        "highres_scale": 1.5,
        "highres_denoise": 0.5,
        "lowres_denoise": 0.9,
        "light_source": "None",
        "number_of_images": 1,
        "output_format": "webp",
        "output_quality": 80,
    }


async def test_v1_answers_the_image_bytes(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    image_server: ImageServer,
    background_worker: None,
) -> None:
    response = await client.post(
        "/v1/ic-light",
        headers={**tenant.headers, "Content-Type": "application/json"},
        json=seed_example(image_server.url("/chelsea.png")),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert response.headers["x-seed-value"] == "42"
    assert int(response.headers["x-remaining-credits"]) == 1000 - 10
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("WEBP", (768, 960))


async def test_v2_queues_then_completes_with_one_output(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    image_server: ImageServer,
    run_worker: RunWorker,
) -> None:
    submitted = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json=seed_example(image_server.url("/chelsea.png")),
    )
    assert submitted.status_code == 202, submitted.text
    body = submitted.json()
    assert body["status"] == "QUEUED"
    request_id = body["request_id"]
    assert body["status_url"].endswith(f"/v2/requests/{request_id}/status")

    await run_worker()

    status = await client.get(f"/v2/requests/{request_id}/status", headers=tenant.headers)
    assert status.json()["status"] == "COMPLETED"
    record = (await client.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    assert record["params"]["seed"] == 42
    assert record["backend"]["used"] == "local"
    assert record["credits"] == {"reserved": 10, "charged": 10}
    [output] = record["outputs"]
    assert (output["width"], output["height"], output["content_type"]) == (768, 960, "image/webp")

    # The signed URL works without the API key.
    download = await client.get(output["url"].removeprefix("http://testserver"))
    assert download.status_code == 200
    assert Image.open(io.BytesIO(download.content)).size == (768, 960)
