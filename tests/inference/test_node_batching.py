"""A real `relight-node` process batching concurrent requests, relighting onto backgrounds,
and telling an operator about it on `/metrics`."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from relight.core.config import Settings
from tests.conftest import example_bytes
from tests.nodes.processes import NodeProcess, node_process

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMALL: dict[str, Any] = {"width": 256, "height": 320, "steps": 3, "highres_scale": 1.0}


@pytest.fixture(scope="module")
def batching_node(
    settings: Settings, tiny_fc_and_fbc_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    with node_process(
        "batching-1",
        redis_url=settings.redis_url,
        namespace=f"relight:test-batching:{uuid.uuid4().hex[:8]}",
        log_dir=tmp_path_factory.mktemp("batching-node"),
        model_dir=tiny_fc_and_fbc_model_dir,
        capacity=4,
        startup_timeout_s=120,
        extra_env={"RELIGHT_NODE_MAX_BATCH": "8", "RELIGHT_NODE_BATCH_WINDOW_MS": "3000"},
    ) as process:
        yield process


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _astronaut() -> bytes:
    return (EXAMPLES / "astronaut.png").read_bytes()


async def _post(
    client: httpx.AsyncClient, node: NodeProcess, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"{node.url}/v1/relight", json=body, timeout=120)


def _sizes(response: httpx.Response) -> list[tuple[int, int]]:
    assert response.status_code == 200, response.text
    sizes = []
    for image in response.json()["images"]:
        with Image.open(io.BytesIO(base64.b64decode(image["data"]))) as opened:
            sizes.append(opened.size)
    return sizes


def _histogram(text: str, name: str) -> dict[str, float]:
    """Bucket upper bound → cumulative count, plus "count"."""
    buckets = {
        match["le"]: float(match["value"])
        for match in re.finditer(
            rf'^{name}_bucket{{le="(?P<le>[^"]+)"}} (?P<value>\S+)$', text, re.M
        )
    }
    count = re.search(rf"^{name}_count (\S+)$", text, re.M)
    assert count is not None, text
    buckets["count"] = float(count.group(1))
    return buckets


async def test_concurrent_requests_share_passes_and_metrics_show_the_batches(
    batching_node: NodeProcess,
) -> None:
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{batching_node.url}/healthz")).json()
        assert (health["backgrounds"], health["max_batch_images"], health["capacity"]) == (
            True,
            8,
            4,
        )
        bodies = [
            {"image": _b64(example_bytes()), "params": {"prompt": "a cat", **SMALL}, "seed": seed}
            for seed in (1, 2)
        ]
        responses = await asyncio.gather(*(_post(client, batching_node, b) for b in bodies))
        assert [_sizes(response) for response in responses] == [[(256, 320)], [(256, 320)]]
        text = (await client.get(f"{batching_node.url}/metrics")).text

    requests = _histogram(text, "relight_node_batch_requests")
    # Two passes (low-res, high-res), each with both requests: nothing ran alone.
    assert requests["count"] >= 2
    assert requests["1.0"] == 0
    assert _histogram(text, "relight_node_batch_images")["2.0"] >= 2
    assert 'relight_node_renders_total{outcome="ok"} 2.0' in text
    assert _histogram(text, "relight_node_step_seconds")["count"] >= 2
    assert "relight_node_in_flight 0.0" in text


async def test_a_background_request_relights_onto_the_background(
    batching_node: NodeProcess,
) -> None:
    params: dict[str, Any] = {
        "prompt": "a cat in space",
        "background_source": "Use Background Image",
        **SMALL,
    }
    body: dict[str, Any] = {
        "image": _b64(example_bytes()),
        "background": _b64(_astronaut()),
        "params": params,
        "seed": 3,
    }
    async with httpx.AsyncClient() as client:
        response = await _post(client, batching_node, body)
        assert _sizes(response) == [(256, 320)]

        del body["background"]
        missing = await _post(client, batching_node, body)
        assert missing.status_code == 422, missing.text
        assert "background" in missing.json()["error"]

        lit = {**body, "params": {**params, "background_source": "Left Light"}}
        assert _sizes(await _post(client, batching_node, lit)) == [(256, 320)]


async def test_a_node_without_the_fbc_model_refuses_background_requests(
    settings: Settings, tmp_path: Path
) -> None:
    with node_process(
        "classic-1",
        redis_url=settings.redis_url,
        namespace=f"relight:test-batching:{uuid.uuid4().hex[:8]}",
        log_dir=tmp_path,
    ) as node:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{node.url}/healthz")).json()["backgrounds"] is False
            body = {
                "image": _b64(example_bytes()),
                "params": {"prompt": "a cat", "background_source": "Ambient", **SMALL},
                "seed": 1,
            }
            response = await _post(client, node, body)
    assert response.status_code == 422
    assert response.json()["code"] == "background_not_served"
