"""Out of GPU memory inside a batched pass (verified on the CPU with a stand-in UNet that
raises torch's OutOfMemoryError): the pass's tensors are freed at once, without the cyclic
collector, every member gets the distinct `out_of_memory` error, and the node answers 507."""

from __future__ import annotations

import base64
import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from inference.engines.iclight import ICLightEngine
from inference.iclight.memory import DeviceOutOfMemory
from inference.iclight.weights import Variant
from inference.node.app import create_node_app
from inference.node.settings import NodeSettings
from relight.core.params import RelightParams
from tests.conftest import example_bytes

PARAMS = RelightParams(prompt="a cat", width=256, height=256, steps=2, highres_scale=1.0)


class OutOfMemoryUNet:
    """Stands in for a UNet runner: keeps weak references to what the pass gives it (the
    activations a real UNet would hold), then runs out of memory."""

    fixed_shapes = False

    def __init__(self) -> None:
        self.seen: list[weakref.ref[torch.Tensor]] = []
        self.batch_sizes: list[int] = []

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        activations = sample * 2  # held by this frame, as a real UNet's would be
        self.seen += [weakref.ref(sample), weakref.ref(hidden_states), weakref.ref(activations)]
        self.batch_sizes.append(sample.shape[0])
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (stand-in)")


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def engine(tiny_model_dir: Path) -> tuple[ICLightEngine, OutOfMemoryUNet]:
    loaded = ICLightEngine.from_dir(
        tiny_model_dir, device="cpu", max_batch_images=4, batch_window_s=5.0
    )
    unet = OutOfMemoryUNet()
    loaded.runners[Variant.FC] = unet  # type: ignore[assignment]
    return loaded, unet


def subject() -> Image.Image:
    return Image.new("RGB", (256, 256), (120, 90, 60))


def test_a_batched_pass_out_of_memory_frees_its_tensors_at_once(
    engine: tuple[ICLightEngine, OutOfMemoryUNet], collector_off: None
) -> None:
    relighter, unet = engine
    errors: list[str] = []

    def render(seed: int) -> None:
        try:
            relighter.relight(subject(), PARAMS, seed)
        except DeviceOutOfMemory as exc:
            errors.append(exc.code)

    threads = [threading.Thread(target=render, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == ["out_of_memory", "out_of_memory"]
    assert unet.batch_sizes == [4]  # one pass for both requests (2 images, guidance doubles)
    assert unet.seen
    assert all(ref() is None for ref in unet.seen), "tensors kept alive"


def test_a_lone_pass_out_of_memory_frees_its_tensors_at_once(
    tiny_model_dir: Path, collector_off: None
) -> None:
    relighter = ICLightEngine.from_dir(tiny_model_dir, device="cpu")
    unet = OutOfMemoryUNet()
    relighter.runners[Variant.FC] = unet  # type: ignore[assignment]
    with pytest.raises(DeviceOutOfMemory):
        relighter.relight(subject(), PARAMS, 1)
    assert unet.seen
    assert all(ref() is None for ref in unet.seen)


async def test_the_node_answers_out_of_memory_as_507(
    engine: tuple[ICLightEngine, OutOfMemoryUNet],
) -> None:
    relighter, _ = engine
    app = create_node_app(
        NodeSettings(engine="iclight", redis_url="", capacity=2, warm_up=False),
        node_id="oom-node",
        url="http://oom-node",
        engine=relighter,
    )
    payload = {
        "image": base64.b64encode(example_bytes()).decode(),
        "params": PARAMS.model_dump(mode="json"),
        "seed": 3,
    }
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            response = await client.post("/v1/relight", json=payload, timeout=120)
            streamed = await client.post(
                "/v1/relight",
                json=payload,
                headers={"accept": "application/x-ndjson"},
                timeout=120,
            )
    assert response.status_code == 507, response.text
    assert response.json()["code"] == "out_of_memory"
    assert '"code":"out_of_memory"' in streamed.text, streamed.text
