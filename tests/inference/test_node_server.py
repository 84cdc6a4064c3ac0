"""The node service over real HTTP: `relight-node` processes serving the classic engine."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image
from redis.asyncio import Redis

from relight import __version__
from relight.core.config import Settings
from relight.nodes import registry
from tests.conftest import example_bytes
from tests.helpers import png_bytes
from tests.nodes.processes import NodeProcess, node_process

TOKEN = "node-token-for-tests-0123456789"
NAMESPACE = f"relight:test-nodes:{uuid.uuid4().hex[:8]}"
# Long enough to watch it run (12 images at 1536×1536): a realistic slow request.
SLOW = {"prompt": "sunset", "width": 1024, "height": 1024, "number_of_images": 12}


def body(params: dict[str, Any] | None = None, seed: int = 42, **extra: Any) -> dict[str, Any]:
    return {
        "image": base64.b64encode(example_bytes()).decode(),
        "params": params or {"prompt": "cat, sunset", "light_source": "Left Light"},
        "seed": seed,
        **extra,
    }


@pytest.fixture(scope="module")
def node(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with node_process(
        "node-a",
        redis_url=settings.redis_url,
        namespace=NAMESPACE,
        log_dir=tmp_path_factory.mktemp("node-logs"),
    ) as process:
        yield process


@pytest.fixture(scope="module")
def guarded_node(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    with node_process(
        "node-guarded",
        redis_url=settings.redis_url,
        namespace=NAMESPACE,
        log_dir=tmp_path_factory.mktemp("node-logs"),
        token=TOKEN,
    ) as process:
        yield process


async def post(url: str, payload: Any, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(f"{url}/v1/relight", json=payload, headers=headers)


async def test_healthz_describes_the_node(node: NodeProcess) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{node.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "id": "node-a",
        "url": node.url,
        "engine": "classic",
        "model": "classic-v1",
        "device": "cpu",
        "capacity": 1,
        "in_flight": 0,
        "version": __version__,
        "backgrounds": False,
        "max_batch_images": 1,
        # The classic engine has no model folder and no matting model.
        "model_digest": None,
        "matting": None,
    }


async def test_relight_answers_images_of_the_output_size_with_the_seed(node: NodeProcess) -> None:
    params = {"prompt": "cat, neon", "number_of_images": 2, "output_format": "png"}
    response = await post(node.url, body(params, seed=1234))
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["node"], result["engine"], result["seed"]) == ("node-a", "classic", 1234)
    assert [image["index"] for image in result["images"]] == [0, 1]
    for image in result["images"]:
        assert (image["width"], image["height"], image["seed"]) == (768, 960, 1234)
        assert image["content_type"] == "image/png"
        with Image.open(io.BytesIO(base64.b64decode(image["data"]))) as decoded:
            assert (decoded.format, decoded.size) == ("PNG", (768, 960))
    assert result["timings"]["engine_ms"] > 0


async def test_same_seed_same_bytes_other_seed_other_bytes(node: NodeProcess) -> None:
    first, again, other = [
        (await post(node.url, body(seed=seed))).json()["images"][0]["data"] for seed in (7, 7, 8)
    ]
    assert first == again
    assert first != other


async def test_ndjson_stream_reports_progress_then_the_result(node: NodeProcess) -> None:
    params = {"prompt": "moonlight", "number_of_images": 4, "width": 256, "height": 256}
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream(
            "POST",
            f"{node.url}/v1/relight",
            json=body(params),
            headers={"accept": "application/x-ndjson"},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [orjson.loads(line) async for line in response.aiter_lines() if line]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "result"
    progress = [event["progress"] for event in events if event["event"] == "progress"]
    # The classic engine's 20 stages: the scene (2 + 2), then 4 per image (light field and
    # three channels).
    assert progress == [round(stage / 20, 4) for stage in (2, *range(4, 21))]
    assert len(events[-1]["images"]) == 4


async def test_capacity_one_refuses_a_second_request_quickly(
    node: NodeProcess, redis: Redis, settings: Settings
) -> None:
    slow = asyncio.create_task(post(node.url, body(SLOW)))
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(500):
            if (await client.get(f"{node.url}/healthz")).json()["in_flight"] == 1:
                break
            await asyncio.sleep(0.02)
        refused = await client.post(f"{node.url}/v1/relight", json=body())
        # Refused at once: not queued behind the slow request, which is still rendering.
        slow_still_running = not slow.done()
        # The heartbeat carries the load, with a TTL.
        [seen] = [n for n in await registry.live_nodes(redis, NAMESPACE) if n.id == "node-a"]
        ttl_ms = await redis.pttl(registry.node_key(NAMESPACE, "node-a"))
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "node_busy"
    assert slow_still_running
    assert (seen.in_flight, seen.capacity, seen.url) == (1, 1, node.url)
    assert 0 < ttl_ms <= 1500  # three heartbeats of 0.5 s
    finished = await slow
    assert finished.status_code == 200
    assert len(finished.json()["images"]) == 12
    assert finished.json()["images"][0]["width"] == 1536
    assert node.health()["in_flight"] == 0


async def test_heartbeat_disappears_when_the_node_stops(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    with node_process(
        "node-brief", redis_url=settings.redis_url, namespace=NAMESPACE, log_dir=tmp_path
    ):
        ids = {n.id for n in await registry.live_nodes(redis, NAMESPACE)}
        assert "node-brief" in ids
    assert "node-brief" not in {n.id for n in await registry.live_nodes(redis, NAMESPACE)}


async def test_a_token_is_required_when_set(guarded_node: NodeProcess) -> None:
    missing = await post(guarded_node.url, body())
    wrong = await post(guarded_node.url, body(), authorization="Bearer not-the-token-at-all")
    right = await post(guarded_node.url, body(), authorization=f"Bearer {TOKEN}")
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["code"] == "unauthorized"
    assert "RELIGHT_NODE_TOKEN" in missing.json()["error"]
    assert right.status_code == 200
    async with httpx.AsyncClient() as client:  # health stays open, for probes
        assert (await client.get(f"{guarded_node.url}/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("payload", "status", "code", "words"),
    [
        pytest.param(
            {"image": "%%%", "params": {"prompt": "x"}, "seed": 1},
            400,
            "invalid_image",
            "base64",
            id="not-base64",
        ),
        pytest.param(
            {
                "image": base64.b64encode(b"not an image").decode(),
                "params": {"prompt": "x"},
                "seed": 1,
            },
            400,
            "invalid_image",
            "",
            id="not-an-image",
        ),
        pytest.param(
            {"image": "aGk=", "params": {"prompt": "x", "width": 100}, "seed": 1},
            422,
            "validation_error",
            "params.width",
            id="width-out-of-choices",
        ),
        pytest.param(
            {"image": "aGk=", "params": {"prompt": "x"}, "seed": -5},
            422,
            "validation_error",
            "seed",
            id="negative-seed",
        ),
        pytest.param(
            {"params": {"prompt": "x"}, "seed": 1}, 422, "validation_error", "image", id="no-image"
        ),
    ],
)
async def test_bad_input_is_a_4xx_with_a_clear_message(
    node: NodeProcess, payload: dict[str, Any], status: int, code: str, words: str
) -> None:
    response = await post(node.url, payload)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert words in response.json()["error"]
    assert node.health()["in_flight"] == 0


async def test_small_png_subject_is_accepted(node: NodeProcess) -> None:
    payload = body({"prompt": "x", "width": 256, "height": 256, "highres_scale": 1})
    payload["image"] = base64.b64encode(png_bytes()).decode()
    response = await post(node.url, payload)
    assert response.status_code == 200
    assert response.json()["images"][0]["width"] == 256
