"""IC-Light through the node (issue 6, must show 1): a real `relight-node` process loads the
tiny model from disk and serves it over HTTP; then a job goes through the API, the queue and
the worker's `gpu` backend to that node."""

from __future__ import annotations

import base64
import io
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from redis.asyncio import Redis

from inference.model_folder import model_digest
from relight.core.config import Settings
from relight.nodes.registry import live_nodes
from tests.conftest import TenantKey, example_bytes
from tests.fakes.segmind import relight_client, run_burst_worker
from tests.helpers import get_record
from tests.nodes.processes import NodeProcess, clear_slots, node_process

pytestmark = pytest.mark.slow

PROMPT = "a cat, warm sunset light"


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"relight:test-iclight:{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def iclight_node(
    settings: Settings,
    namespace: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeProcess]:
    with node_process(
        "iclight-1",
        redis_url=settings.redis_url,
        namespace=namespace,
        log_dir=tmp_path_factory.mktemp("iclight-node"),
        model_dir=tiny_model_dir,
        startup_timeout_s=120,
    ) as process:
        yield process


@pytest.fixture
async def clean_namespace(redis: Redis, namespace: str) -> AsyncIterator[str]:
    yield namespace
    await clear_slots(redis, namespace)


async def relight(node: NodeProcess, seed: int, **params: Any) -> list[bytes]:
    payload = {
        "image": base64.b64encode(example_bytes()).decode(),
        "params": {"prompt": PROMPT, **params},
        "seed": seed,
    }
    # A CPU render at the defaults (768x960 after the highres pass) took over 120 s on a loaded
    # 2-core machine; the bound only keeps a hung node from hanging the suite.
    async with httpx.AsyncClient(timeout=600) as client:
        response = await client.post(f"{node.url}/v1/relight", json=payload)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["engine"], result["seed"]) == ("iclight", seed)
    return [base64.b64decode(image["data"]) for image in result["images"]]


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def test_healthz_names_the_iclight_model(iclight_node: NodeProcess) -> None:
    health = iclight_node.health()
    assert (health["engine"], health["device"], health["capacity"]) == ("iclight", "cpu", 1)
    assert str(health["model"]).startswith("iclight_sd15_fc/")


async def test_defaults_give_768x960_and_the_same_seed_the_same_bytes(
    iclight_node: NodeProcess,
) -> None:
    [first] = await relight(iclight_node, seed=11)
    [again] = await relight(iclight_node, seed=11)
    assert size_of(first) == (768, 960)
    assert first == again


async def test_light_source_and_prompt_change_the_output(iclight_node: NodeProcess) -> None:
    small = {"width": 256, "height": 256, "highres_scale": 1.0, "steps": 4}
    [plain] = await relight(iclight_node, seed=5, **small)
    [lit] = await relight(iclight_node, seed=5, light_source="Left Light", **small)
    [other_prompt] = await relight(iclight_node, seed=5, **{**small, "prompt": "neon, night"})
    assert len({plain, lit, other_prompt}) == 3


async def test_two_images_in_one_call_differ(iclight_node: NodeProcess) -> None:
    images = await relight(iclight_node, seed=3, number_of_images=2, width=256, height=256, steps=4)
    assert len(images) == 2
    assert images[0] != images[1]
    assert {size_of(image) for image in images} == {(384, 384)}


async def test_a_job_runs_through_the_api_queue_and_worker_on_the_iclight_node(
    settings: Settings,
    clean_namespace: str,
    iclight_node: NodeProcess,
    tenant: TenantKey,
) -> None:
    config = settings.model_copy(update={"gpu_namespace": clean_namespace, "gpu_wait_s": 30.0})
    body = {
        "prompt": PROMPT,
        "subject_image": base64.b64encode(example_bytes()).decode(),
        "width": 256,
        "height": 256,
        "steps": 4,
        "seed": 21,
        "backend": "gpu",
    }
    async with relight_client(config) as client:
        response = await client.post("/v2/ic-light", headers=tenant.headers, json=body)
        assert response.status_code == 202, response.text
        await run_burst_worker(config)
        record = await get_record(client, tenant, response.json()["request_id"])
        assert record["status"] == "COMPLETED", record
        assert (record["backend"]["used"], record["backend"]["node"]) == ("gpu", "iclight-1")
        [output] = record["outputs"]
        assert (output["width"], output["height"], output["seed"]) == (384, 384, 21)
        image = await client.get(output["url"])
    assert image.status_code == 200
    assert size_of(image.content) == (384, 384)


async def test_the_record_names_the_weights_the_node_reports(
    settings: Settings,
    redis: Redis,
    clean_namespace: str,
    iclight_node: NodeProcess,
    tiny_model_dir: Path,
    tenant: TenantKey,
) -> None:
    """The node's model digest (its folder has no manifest: the digest of its files) is in
    /healthz, in its heartbeat, and on the record of a job it rendered, beside the seed."""
    health = iclight_node.health()
    assert health["model_digest"] == model_digest(tiny_model_dir)
    assert health["matting"] is None
    [beat] = [node for node in await live_nodes(redis, clean_namespace) if node.id == "iclight-1"]
    assert (beat.model_digest, beat.matting) == (health["model_digest"], None)
    config = settings.model_copy(update={"gpu_namespace": clean_namespace, "gpu_wait_s": 30.0})
    body = {
        "prompt": PROMPT,
        "subject_image": base64.b64encode(example_bytes()).decode(),
        "width": 256,
        "height": 256,
        "highres_scale": 1.0,
        "steps": 4,
        "seed": 22,
        "backend": "gpu",
    }
    async with relight_client(config) as client:
        response = await client.post("/v2/ic-light", headers=tenant.headers, json=body)
        assert response.status_code == 202, response.text
        await run_burst_worker(config)
        record = await get_record(client, tenant, response.json()["request_id"])
    assert record["status"] == "COMPLETED", record
    assert (record["params"]["seed"], record["model_digest"]) == (22, health["model_digest"])


def test_a_node_refuses_to_start_on_a_damaged_model_folder(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "vae/diffusion_pytorch_model.safetensors").unlink()
    with (
        pytest.raises(RuntimeError, match="relight-node exited") as refused,
        node_process(
            "damaged",
            redis_url=settings.redis_url,
            namespace=f"relight:test-damaged:{uuid.uuid4().hex[:8]}",
            log_dir=tmp_path / "logs",
            model_dir=folder,
            startup_timeout_s=60,
        ),
    ):
        pass
    assert "vae/diffusion_pytorch_model.safetensors: missing" in str(refused.value)
