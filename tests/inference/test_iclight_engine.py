"""The IC-Light engine on a tiny random model with the real layout: the real loading and
sampling code on the CPU (and on CUDA when there is one).

Sizes, determinism and batching are observed from outside (pixels, encoded bytes, a torch
forward hook on the UNet); the tensor-level tests compare what the UNet receives with what the
test computes itself from the files on disk.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler
from PIL import Image

from inference.engines.base import RelightEngine
from inference.engines.iclight import ICLightEngine
from inference.iclight.images import composite_on_gray
from inference.iclight.weights import OFFSETS_FILE, ModelFolderError
from relight.core.images import encode_image, resize_and_center_crop
from relight.core.params import LightSource, OutputFormat, RelightParams

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROMPT = "a cat, sunset"
# Small, quick requests for the tensor-level tests.
SMALL: dict[str, Any] = {"width": 256, "height": 320, "steps": 2, "highres_scale": 1.0}
# The tiny VAE's scaled latents spread like SD1.5's (std ≈ 1); the engine's VAE call and the
# test's own (another load, another batch shape) agree to float rounding at that scale.
LATENT_ATOL = 2e-3


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> ICLightEngine:
    return ICLightEngine.from_dir(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def cat() -> Image.Image:
    with Image.open(EXAMPLES / "chelsea.png") as image:
        return image.convert("RGB")


@dataclass
class UNetCalls:
    """What the UNet received, call by call."""

    samples: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[torch.Tensor] = field(default_factory=list)
    hidden_states: list[torch.Tensor] = field(default_factory=list)

    @property
    def batch_sizes(self) -> list[int]:
        return [sample.shape[0] for sample in self.samples]


@contextmanager
def watch_unet(engine: ICLightEngine) -> Iterator[UNetCalls]:
    calls = UNetCalls()

    def record(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.samples.append(args[0].detach().clone())
        calls.timesteps.append(torch.as_tensor(args[1]).detach().clone())
        calls.hidden_states.append(kwargs["encoder_hidden_states"].detach().clone())

    handle = engine.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _pixels(image: Image.Image) -> npt.NDArray[np.int16]:
    return np.asarray(image, dtype=np.int16)


def _vae_latent(model_dir: Path, image: Image.Image) -> torch.Tensor:
    """The test's own encoding: the VAE from disk, pixels / 127 - 1, the mode, scaled."""
    vae = AutoencoderKL.from_pretrained(model_dir / "vae").eval()
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.0 - 1.0)
    with torch.inference_mode():
        latent: torch.Tensor = vae.encode(pixels.permute(2, 0, 1)[None]).latent_dist.mode()
    scaled: torch.Tensor = latent * float(vae.config.scaling_factor)
    return scaled


@pytest.fixture(scope="session")
def default_run(engine: ICLightEngine, cat: Image.Image) -> tuple[list[Image.Image], list[float]]:
    fractions: list[float] = []
    images = engine.relight(cat, RelightParams(prompt=PROMPT), 7, fractions.append)
    return images, fractions


def test_engine_satisfies_the_protocol(engine: ICLightEngine) -> None:
    as_protocol: RelightEngine = engine
    assert as_protocol.name == "iclight"
    assert as_protocol.model.startswith("iclight_sd15_fc")


def test_default_parameters_give_768x960(
    default_run: tuple[list[Image.Image], list[float]],
) -> None:
    images, fractions = default_run
    assert [(image.mode, image.size) for image in images] == [("RGB", (768, 960))]
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    # 25 low-res and 25 high-res steps each report once (plus the start and the end).
    assert len(fractions) == 52


def test_same_seed_gives_identical_pixels_and_bytes(
    engine: ICLightEngine, cat: Image.Image, default_run: tuple[list[Image.Image], list[float]]
) -> None:
    again = engine.relight(cat, RelightParams(prompt=PROMPT), 7)
    assert again[0].tobytes() == default_run[0][0].tobytes()
    first = encode_image(default_run[0][0], OutputFormat.WEBP, 80)
    assert encode_image(again[0], OutputFormat.WEBP, 80) == first


def test_light_source_and_prompt_change_the_output(
    engine: ICLightEngine, cat: Image.Image, default_run: tuple[list[Image.Image], list[float]]
) -> None:
    reference = _pixels(default_run[0][0])
    left = _pixels(
        engine.relight(cat, RelightParams(prompt=PROMPT, light_source=LightSource.LEFT), 7)[0]
    )
    other_prompt = _pixels(engine.relight(cat, RelightParams(prompt="a cat, neon lights"), 7)[0])
    assert np.abs(other_prompt - reference).mean() > 1.0
    # At 0.9 denoise the gradient weighs little against the noise, and a random tiny UNet
    # washes most of it out by the end (the real model does not): fewer pixels change.
    # test_light_gradient_starts_the_low_res_pass checks the gradient's latent directly.
    assert (left != reference).any(axis=-1).mean() > 0.2


def test_two_images_come_from_one_batched_call(engine: ICLightEngine, cat: Image.Image) -> None:
    params = RelightParams(prompt=PROMPT, number_of_images=2)
    with watch_unet(engine) as calls:
        images = engine.relight(cat, params, 7)
    assert [image.size for image in images] == [(768, 960), (768, 960)]
    assert np.abs(_pixels(images[0]) - _pixels(images[1])).mean() > 1.0
    # One UNet call per step for both images: batch 2 × (conditional + unconditional).
    assert len(calls.samples) == 50
    assert set(calls.batch_sizes) == {4}


def test_cfg_one_skips_the_unconditional_half(engine: ICLightEngine, cat: Image.Image) -> None:
    with watch_unet(engine) as calls:
        engine.relight(cat, RelightParams(prompt=PROMPT, cfg=1, **SMALL), 3)
    assert set(calls.batch_sizes) == {1}


def test_first_unet_call_sees_the_foreground_latent(
    engine: ICLightEngine, cat: Image.Image, tiny_model_dir: Path
) -> None:
    with watch_unet(engine) as calls:
        engine.relight(cat, RelightParams(prompt=PROMPT, **SMALL), 11)
    first = calls.samples[0]
    assert first.shape == (2, 8, 40, 32)  # cfg 2: unconditional + conditional; 320×256 / 8
    expected = _vae_latent(tiny_model_dir, resize_and_center_crop(cat, 256, 320))
    for row in first:
        torch.testing.assert_close(row[4:], expected[0], rtol=1e-3, atol=LATENT_ATOL)
    # "None" starts from the request's seeded noise (init sigma 1), the same in both halves.
    noise = torch.randn((1, 4, 40, 32), generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(first[0, :4], noise[0])
    torch.testing.assert_close(first[1, :4], noise[0])


def test_light_gradient_starts_the_low_res_pass(
    engine: ICLightEngine, cat: Image.Image, tiny_model_dir: Path
) -> None:
    with watch_unet(engine) as calls:
        engine.relight(cat, RelightParams(prompt=PROMPT, light_source=LightSource.LEFT, **SMALL), 4)
    # The reference's scheduler, as gradio_demo.py builds it (no beta_schedule: diffusers'
    # default "linear").
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        algorithm_type="sde-dpmsolver++",
        use_karras_sigmas=True,
        steps_offset=1,
    )
    # 2 steps at lowres_denoise 0.9: the reference asks for round(2 / 0.9) = 2 scheduler
    # steps and runs the last int(2 · 0.9) = 1 of them.
    scheduler.set_timesteps(2)
    scheduler.set_begin_index(1)
    first_timestep = scheduler.timesteps[1:2]
    bright_left = np.tile(np.linspace(255, 0, 256), (320, 1))
    gradient = Image.fromarray(np.stack([bright_left] * 3, axis=-1).astype(np.uint8), "RGB")
    noise = torch.randn((1, 4, 40, 32), generator=torch.Generator().manual_seed(4))
    expected = scheduler.add_noise(_vae_latent(tiny_model_dir, gradient), noise, first_timestep)
    assert int(calls.timesteps[0]) == int(first_timestep[0])
    torch.testing.assert_close(calls.samples[0][0, :4], expected[0], rtol=1e-3, atol=LATENT_ATOL)


def test_merged_unet_weights_are_base_plus_offset(
    engine: ICLightEngine, tiny_model_dir: Path
) -> None:
    base = safetensors.torch.load_file(
        str(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    )
    offsets = safetensors.torch.load_file(str(tiny_model_dir / OFFSETS_FILE))
    merged = engine.unet.state_dict()
    assert set(merged) == set(base) == set(offsets)
    for key, weight in merged.items():
        expected = offsets[key].float().clone()
        if key == "conv_in.weight":
            # The base conv_in has 4 input channels; the 4 foreground channels are offset only.
            assert base[key].shape[1] == 4
            assert weight.shape[1] == 8
            expected[:, :4] += base[key]
        else:
            expected += base[key]
        torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6, msg=key)


def _with_alpha(image: Image.Image) -> Image.Image:
    """The image with its left half transparent, and its top-left quarter partly so."""
    width, height = image.size
    alpha = np.full((height, width), 255, dtype=np.uint8)
    alpha[:, : width // 2] = 0
    alpha[: height // 2, : width // 2] = 100
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return rgba


def test_rgba_subject_is_composited_on_gray_by_its_alpha(
    engine: ICLightEngine, tiny_model_dir: Path, cat: Image.Image
) -> None:
    subject = _with_alpha(cat)
    half_w, half_h = cat.width // 2, cat.height // 2
    composite = np.asarray(composite_on_gray(subject, None))
    original = np.asarray(cat, dtype=np.float64)
    assert (composite[half_h:, :half_w] == 127).all()  # transparent: gray 127
    assert (composite[:, half_w:] == original[:, half_w:]).all()  # opaque: the subject
    partial = 127 + (original[:half_h, :half_w] - 127) * (100 / 255)
    assert np.abs(composite[:half_h, :half_w] - partial).max() <= 1

    with watch_unet(engine) as calls:
        engine.relight(subject, RelightParams(prompt=PROMPT, **SMALL), 5)
    crop = resize_and_center_crop(Image.fromarray(composite), 256, 320)
    expected = _vae_latent(tiny_model_dir, crop)
    torch.testing.assert_close(calls.samples[0][0, 4:], expected[0], rtol=1e-3, atol=LATENT_ATOL)


def test_without_alpha_or_matting_the_whole_image_is_the_subject(cat: Image.Image) -> None:
    assert composite_on_gray(cat, None).tobytes() == cat.tobytes()


class RedIsSubject(torch.nn.Module):
    """A stand-in matting network: the red channel is the alpha."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image[:, :1]


def _export_matting_model(path: Path) -> Path:
    size = torch.export.Dim("size", min=64, max=4096)
    program = torch.export.export(
        RedIsSubject(),
        (torch.rand(1, 3, 128, 192),),
        dynamic_shapes={"image": {2: size, 3: torch.export.Dim("width", min=64, max=4096)}},
    )
    torch.export.save(program, str(path))
    return path


def test_matting_model_cuts_out_the_subject(
    tiny_model_dir: Path, tmp_path: Path, cat: Image.Image
) -> None:
    path = _export_matting_model(tmp_path / "matting.pt2")
    matted = ICLightEngine.from_dir(tiny_model_dir, device="cpu", matting_model=path)
    assert matted.matting is not None

    split = np.zeros((400, 600, 3), dtype=np.uint8)
    split[:, :300] = (255, 0, 0)
    split[:, 300:] = (0, 255, 0)
    composite = np.asarray(composite_on_gray(Image.fromarray(split, "RGB"), matted.matting))
    assert (composite[:, :280] == (255, 0, 0)).all()  # alpha 1: kept
    assert (composite[:, 320:] == 127).all()  # alpha 0: gray

    # Through the engine: the UNet sees the matted subject.
    with watch_unet(matted) as calls:
        images = matted.relight(cat, RelightParams(prompt=PROMPT, **SMALL), 5)
    assert images[0].size == (256, 320)
    cut_out = composite_on_gray(cat, matted.matting)
    assert cut_out.tobytes() != cat.tobytes()
    expected = _vae_latent(tiny_model_dir, resize_and_center_crop(cut_out, 256, 320))
    torch.testing.assert_close(calls.samples[0][0, 4:], expected[0], rtol=1e-3, atol=LATENT_ATOL)


def test_long_prompts_are_encoded_in_75_token_chunks(
    engine: ICLightEngine, cat: Image.Image
) -> None:
    # The tiny tokenizer has no merges: one token per character, so 100 characters make two
    # chunks; the short negative prompt is repeated to the same length.
    long_prompt = "x" * 100
    with watch_unet(engine) as calls:
        engine.relight(cat, RelightParams(prompt=long_prompt, appended_prompt="", **SMALL), 1)
    assert calls.hidden_states[0].shape[:2] == (2, 2 * 77)
    short = calls.hidden_states[0][0]
    torch.testing.assert_close(short[:77], short[77:])


def test_concurrent_requests_match_sequential_ones(engine: ICLightEngine, cat: Image.Image) -> None:
    params = [
        RelightParams(prompt=PROMPT, light_source=LightSource.RIGHT, **SMALL),
        RelightParams(prompt="a cat, moonlight", number_of_images=2, **SMALL),
        RelightParams(prompt=PROMPT, **SMALL),
    ]
    sequential = [engine.relight(cat, p, seed)[0].tobytes() for seed, p in enumerate(params)]
    concurrent: dict[int, bytes] = {}

    def run(seed: int) -> None:
        concurrent[seed] = engine.relight(cat, params[seed], seed)[0].tobytes()

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(len(params))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [concurrent[seed] for seed in range(len(params))] == sequential


def test_optimized_path_matches_the_plain_one(tiny_model_dir: Path, cat: Image.Image) -> None:
    """Fused QKV projections and channels-last (on by default on CUDA) change no result."""
    plain = ICLightEngine.from_dir(tiny_model_dir, device="cpu", optimize=False)
    optimized = ICLightEngine.from_dir(tiny_model_dir, device="cpu", optimize=True)
    params = RelightParams(prompt=PROMPT, light_source=LightSource.TOP, **SMALL)
    difference = np.abs(
        _pixels(plain.relight(cat, params, 2)[0]) - _pixels(optimized.relight(cat, params, 2)[0])
    )
    assert difference.max() <= 2


def test_missing_model_file_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (broken / OFFSETS_FILE).unlink()
    with pytest.raises(ModelFolderError, match=OFFSETS_FILE):
        ICLightEngine.from_dir(broken, device="cpu")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"vae/diffusion_pytorch_model\.safetensors"):
        ICLightEngine.from_dir(broken, device="cpu")
    with pytest.raises(ModelFolderError, match="does not exist"):
        ICLightEngine.from_dir(tmp_path / "nowhere", device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_precision_path(tiny_model_dir: Path, cat: Image.Image) -> None:
    gpu = ICLightEngine.from_dir(tiny_model_dir, device="cuda")
    assert gpu.unet.dtype == torch.float16
    assert gpu.vae.dtype == torch.bfloat16
    assert gpu.text_encoder.dtype == torch.float16
    with watch_unet(gpu) as calls:
        first = gpu.relight(cat, RelightParams(prompt=PROMPT, number_of_images=2), 7)
    assert [image.size for image in first] == [(768, 960), (768, 960)]
    assert set(calls.batch_sizes) == {4}
    assert all(sample.dtype == torch.float16 for sample in calls.samples)
    assert all(sample.is_cuda for sample in calls.samples)
    again = gpu.relight(cat, RelightParams(prompt=PROMPT, number_of_images=2), 7)
    assert [image.tobytes() for image in again] == [image.tobytes() for image in first]
    left = gpu.relight(cat, RelightParams(prompt=PROMPT, light_source=LightSource.LEFT), 7)
    assert np.abs(_pixels(left[0]) - _pixels(first[0])).mean() > 1.0


def test_cuda_graphs_need_cuda(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        ICLightEngine.from_dir(tiny_model_dir, device="cpu", cuda_graphs=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_match_the_eager_unet(tiny_model_dir: Path, cat: Image.Image) -> None:
    eager = ICLightEngine.from_dir(tiny_model_dir, device="cuda")
    graphs = ICLightEngine.from_dir(tiny_model_dir, device="cuda", cuda_graphs=True)
    requests = [
        (RelightParams(prompt=PROMPT, light_source=LightSource.LEFT, number_of_images=2), 3),
        (RelightParams(prompt="a cat, moonlight", **SMALL), 4),
    ]
    for params, seed in requests:
        expected = [_pixels(image) for image in eager.relight(cat, params, seed)]
        replayed = [_pixels(image) for image in graphs.relight(cat, params, seed)]
        assert max(int(np.abs(a - b).max()) for a, b in zip(expected, replayed, strict=True)) <= 2
    # Replays from several threads at once give what one thread gets.
    sequential = [graphs.relight(cat, params, seed)[0].tobytes() for params, seed in requests]
    concurrent: dict[int, bytes] = {}

    def run(index: int) -> None:
        params, seed = requests[index]
        concurrent[index] = graphs.relight(cat, params, seed)[0].tobytes()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [concurrent[index] for index in range(len(requests))] == sequential


def test_blank_negative_prompt_is_encoded(engine: ICLightEngine, cat: Image.Image) -> None:
    params = RelightParams(prompt=PROMPT, negative_prompt="", **SMALL)
    with watch_unet(engine) as calls:
        images = engine.relight(cat, params, 8)
    assert images[0].size == (256, 320)
    assert calls.hidden_states[0].shape[:2] == (2, 77)
