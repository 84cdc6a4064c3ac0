"""IC-Light on a GPU: our engine against the plain diffusers pipelines, at Segmind's defaults.

Run as `.venv/bin/python bench/node_gpu.py` on a CUDA machine. It writes a model folder with
the full-size SD1.5 architecture and random weights (built from config in code, no hub), then
times, in the same run and on the same request (512×640, 25 steps, highres 1.5, cfg 2):

- **ours**: `ICLightEngine` (merged fp16 UNet with fused QKV projections, channels-last,
  cuDNN autotuning, prompts encoded once, per-request scheduler), and the same with the UNet
  replayed as CUDA graphs (`ours+graphs`), and with `--compile` under torch.compile;
- **plain**: the reference demo written the straightforward way: StableDiffusionPipeline and
  StableDiffusionImg2ImgPipeline sharing the hooked 8-channel UNet, fp16 UNet, bf16 VAE, SDPA.

It prints seconds per image, images per second and the speed-up (goal: at least 2×), then
runs both once more in fp32 with the same seed and prints the largest pixel difference.

Without CUDA it prints that it was not run and exits 0. `--tiny --device cpu` runs the same
script end to end with the tiny test model on the CPU (both versions in fp32), which is how
the test suite checks it.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

UInt8Array = npt.NDArray[np.uint8]

# SD1.5's architecture (runwayml/stable-diffusion-v1-5 and its fine-tunes such as
# realistic-vision-v51, which the reference uses); diffusers' defaults fill in the rest.
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
}
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


@dataclass(frozen=True, slots=True)
class Request:
    """The parameters both implementations run (Segmind's defaults unless told otherwise)."""

    prompt: str
    width: int
    height: int
    steps: int
    highres_scale: float
    number_of_images: int
    cfg: float = 2.0
    highres_denoise: float = 0.5
    lowres_denoise: float = 0.9
    negative_prompt: str = "lowres, bad anatomy, bad hands, cropped, worst quality"
    appended_prompt: str = "best quality"
    light_source: str = "None"


# ---------------------------------------------------------------------------------------------
# The plain version: the reference demo's process(), on diffusers' pipelines, written plainly.
# ---------------------------------------------------------------------------------------------


class PlainICLight:
    """gradio_demo.py's pipeline, kept as close to the reference as the bench allows."""

    def __init__(self, model_dir: Path, device: torch.device, full_precision: bool) -> None:
        from diffusers import (
            AutoencoderKL,
            DPMSolverMultistepScheduler,
            StableDiffusionImg2ImgPipeline,
            StableDiffusionPipeline,
            UNet2DConditionModel,
        )
        from diffusers.models.attention_processor import AttnProcessor2_0
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, CLIPTokenizer

        self.device = device
        tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(
            model_dir / "text_encoder", torch_dtype=torch.float32
        )
        vae = AutoencoderKL.from_pretrained(model_dir / "vae", torch_dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", torch_dtype=torch.float32)

        with torch.no_grad():
            new_conv_in = torch.nn.Conv2d(
                8,
                unet.conv_in.out_channels,
                unet.conv_in.kernel_size,
                unet.conv_in.stride,
                unet.conv_in.padding,
            )
            new_conv_in.weight.zero_()
            new_conv_in.weight[:, :4, :, :].copy_(unet.conv_in.weight)
            new_conv_in.bias = unet.conv_in.bias
            unet.conv_in = new_conv_in

        unet_original_forward = unet.forward

        def hooked_unet_forward(
            sample: torch.Tensor,
            timestep: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            **kwargs: Any,
        ) -> Any:
            c_concat = kwargs["cross_attention_kwargs"]["concat_conds"].to(sample)
            c_concat = torch.cat([c_concat] * (sample.shape[0] // c_concat.shape[0]), dim=0)
            new_sample = torch.cat([sample, c_concat], dim=1)
            kwargs["cross_attention_kwargs"] = {}
            return unet_original_forward(new_sample, timestep, encoder_hidden_states, **kwargs)

        unet.forward = hooked_unet_forward

        sd_offset = load_file(str(model_dir / "iclight_sd15_fc.safetensors"))
        sd_origin = unet.state_dict()
        sd_merged = {k: sd_origin[k] + sd_offset[k] for k in sd_origin}
        unet.load_state_dict(sd_merged, strict=True)
        del sd_offset, sd_origin, sd_merged

        half = device.type == "cuda" and not full_precision
        self.text_encoder = text_encoder.to(
            device=device, dtype=torch.float16 if half else torch.float32
        )
        self.vae = vae.to(device=device, dtype=torch.bfloat16 if half else torch.float32)
        self.unet = unet.to(device=device, dtype=torch.float16 if half else torch.float32)
        self.unet.set_attn_processor(AttnProcessor2_0())
        self.vae.set_attn_processor(AttnProcessor2_0())
        self.tokenizer = tokenizer

        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            algorithm_type="sde-dpmsolver++",
            use_karras_sigmas=True,
            steps_offset=1,
        )
        parts: dict[str, Any] = {
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": tokenizer,
            "unet": self.unet,
            "scheduler": scheduler,
            "safety_checker": None,
            "requires_safety_checker": False,
            "feature_extractor": None,
            "image_encoder": None,
        }
        self.t2i_pipe = StableDiffusionPipeline(**parts)
        self.i2i_pipe = StableDiffusionImg2ImgPipeline(**parts)
        for pipe in (self.t2i_pipe, self.i2i_pipe):
            pipe.set_progress_bar_config(disable=True)

    @torch.inference_mode()
    def encode_prompt_inner(self, txt: str) -> torch.Tensor:
        max_length = self.tokenizer.model_max_length
        chunk_length = max_length - 2
        id_start, id_end = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        tokens = self.tokenizer(txt, truncation=False, add_special_tokens=False)["input_ids"]
        chunks = [
            [id_start, *tokens[i : i + chunk_length], id_end]
            for i in range(0, len(tokens), chunk_length)
        ]
        chunks = [ck + [id_end] * (max_length - len(ck)) for ck in chunks]
        token_ids = torch.tensor(chunks).to(device=self.device, dtype=torch.int64)
        conds: torch.Tensor = self.text_encoder(token_ids).last_hidden_state
        return conds

    @torch.inference_mode()
    def encode_prompt_pair(self, positive: str, negative: str) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.encode_prompt_inner(positive)
        uc = self.encode_prompt_inner(negative)
        max_chunk = max(len(c), len(uc))
        c = torch.cat([c] * math.ceil(max_chunk / len(c)), dim=0)[:max_chunk]
        uc = torch.cat([uc] * math.ceil(max_chunk / len(uc)), dim=0)[:max_chunk]
        c = torch.cat([p[None, ...] for p in c], dim=1)
        uc = torch.cat([p[None, ...] for p in uc], dim=1)
        return c, uc

    def _encode(self, images: list[UInt8Array]) -> torch.Tensor:
        h = torch.from_numpy(np.stack(images, axis=0)).float() / 127.0 - 1.0
        h = h.movedim(-1, 1).to(device=self.vae.device, dtype=self.vae.dtype)
        latent: torch.Tensor = self.vae.encode(h).latent_dist.mode()
        return latent * float(self.vae.config.scaling_factor)

    def _decode(self, latents: torch.Tensor) -> list[UInt8Array]:
        pixels = self.vae.decode(latents).sample
        out = (pixels.movedim(1, -1) * 127.5 + 127.5).float().cpu().numpy()
        return [y.clip(0, 255).astype(np.uint8) for y in out]

    @torch.inference_mode()
    def process(self, subject: Image.Image, request: Request, seed: int) -> list[UInt8Array]:
        from relight.images import resize_and_center_crop

        width, height = request.width, request.height
        input_bg = _gradient(request.light_source, width, height)
        rng = torch.Generator(device=self.device).manual_seed(int(seed))

        fg = np.asarray(resize_and_center_crop(subject, width, height))
        concat_conds = self._encode([fg])
        conds, unconds = self.encode_prompt_pair(
            f"{request.prompt}, {request.appended_prompt}", request.negative_prompt
        )
        common: dict[str, Any] = {
            "prompt_embeds": conds,
            "negative_prompt_embeds": unconds,
            "num_images_per_prompt": request.number_of_images,
            "generator": rng,
            "output_type": "latent",
            "guidance_scale": request.cfg,
        }
        if input_bg is None:
            latents = (
                self.t2i_pipe(
                    width=width,
                    height=height,
                    num_inference_steps=request.steps,
                    cross_attention_kwargs={"concat_conds": concat_conds},
                    **common,
                ).images.to(self.vae.dtype)
                / self.vae.config.scaling_factor
            )
        else:
            latents = (
                self.i2i_pipe(
                    image=self._encode([input_bg]),
                    strength=request.lowres_denoise,
                    num_inference_steps=round(request.steps / request.lowres_denoise),
                    cross_attention_kwargs={"concat_conds": concat_conds},
                    **common,
                ).images.to(self.vae.dtype)
                / self.vae.config.scaling_factor
            )

        target = (
            round(width * request.highres_scale / 64.0) * 64,
            round(height * request.highres_scale / 64.0) * 64,
        )
        pixels = [
            np.asarray(Image.fromarray(p).resize(target, Image.Resampling.LANCZOS))
            for p in self._decode(latents)
        ]
        latents = self._encode(pixels).to(device=self.unet.device, dtype=self.unet.dtype)
        fg = np.asarray(resize_and_center_crop(subject, *target))
        concat_conds = self._encode([fg])
        latents = (
            self.i2i_pipe(
                image=latents,
                strength=request.highres_denoise,
                num_inference_steps=round(request.steps / request.highres_denoise),
                cross_attention_kwargs={"concat_conds": concat_conds},
                **common,
            ).images.to(self.vae.dtype)
            / self.vae.config.scaling_factor
        )
        return self._decode(latents)


def _gradient(light_source: str, width: int, height: int) -> UInt8Array | None:
    if light_source == "None":
        return None
    if light_source in ("Left Light", "Right Light"):
        ramp = (
            np.linspace(255, 0, width)
            if light_source == "Left Light"
            else np.linspace(0, 255, width)
        )
        image = np.tile(ramp, (height, 1))
    else:
        ramp = (
            np.linspace(255, 0, height)
            if light_source == "Top Light"
            else np.linspace(0, 255, height)
        )
        image = np.tile(ramp[:, None], (1, width))
    return np.stack((image,) * 3, axis=-1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------


def _ours(
    model_dir: Path,
    device: torch.device,
    *,
    full_precision: bool,
    cuda_graphs: bool = False,
    compile_unet: bool = False,
) -> Any:
    from inference.engines.iclight import ICLightEngine

    return ICLightEngine.from_dir(
        model_dir,
        device=str(device),
        full_precision=full_precision,
        cuda_graphs=cuda_graphs,
        compile_unet=compile_unet,
    )


def _run_ours(engine: Any, subject: Image.Image, request: Request, seed: int) -> list[UInt8Array]:
    from relight.params import RelightParams

    params = RelightParams(
        prompt=request.prompt,
        appended_prompt=request.appended_prompt,
        negative_prompt=request.negative_prompt,
        cfg=request.cfg,
        width=request.width,
        height=request.height,
        steps=request.steps,
        highres_scale=request.highres_scale,
        highres_denoise=request.highres_denoise,
        lowres_denoise=request.lowres_denoise,
        light_source=request.light_source,
        number_of_images=request.number_of_images,
    )
    return [np.asarray(image) for image in engine.relight(subject, params, seed)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(
    run: Callable[[int], list[UInt8Array]], device: torch.device, warmup: int, runs: int
) -> tuple[float, list[UInt8Array]]:
    """Median seconds per request over `runs` (after `warmup`), and the last images."""
    images: list[UInt8Array] = []
    for index in range(warmup):
        images = run(index)
    samples: list[float] = []
    for index in range(runs):
        _synchronize(device)
        start = time.perf_counter()
        images = run(warmup + index)
        _synchronize(device)
        samples.append(time.perf_counter() - start)
    return float(np.median(samples)), images


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model, not SD1.5")
    parser.add_argument("--model-dir", type=Path, help="use this model folder instead")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--highres-scale", type=float, default=1.5)
    parser.add_argument("--number-of-images", type=int, default=1)
    parser.add_argument(
        "--light-source",
        default="None",
        choices=["None", "Left Light", "Right Light", "Top Light", "Bottom Light"],
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--no-cuda-graphs", action="store_true", help="do not time the CUDA-graph variant"
    )
    parser.add_argument("--skip-check", action="store_true", help="skip the fp32 comparison")
    args = parser.parse_args()

    if args.device is None and not torch.cuda.is_available():
        print(
            "node_gpu bench not run: CUDA is not available (--tiny --device cpu runs a smoke test)"
        )
        return 0
    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("node_gpu bench not run: CUDA is not available")
        return 0

    request = Request(
        prompt="a cat, sunset",
        width=args.width,
        height=args.height,
        steps=args.steps,
        highres_scale=args.highres_scale,
        number_of_images=args.number_of_images,
        light_source=args.light_source,
    )
    with Image.open(ROOT / "examples" / "chelsea.png") as opened:
        subject = opened.convert("RGB")

    with tempfile.TemporaryDirectory(prefix="relight-bench-") as scratch:
        model_dir = args.model_dir
        if model_dir is None:
            from inference.tiny_model import write_model, write_tiny_model

            started = time.perf_counter()
            if args.tiny:
                model_dir = write_tiny_model(Path(scratch) / "tiny")
            else:
                model_dir = write_model(
                    Path(scratch) / "sd15",
                    unet_config=SD15_UNET_CONFIG,
                    vae_config=SD15_VAE_CONFIG,
                    text_config=SD15_TEXT_CONFIG,
                    dtype=torch.float16,
                )
            print(f"model folder written in {time.perf_counter() - started:.1f} s")
        kind = "tiny" if args.tiny else "SD1.5 (random weights)"
        print(
            f"IC-Light fc, {kind}, {device}"
            f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}: "
            f"{request.width}x{request.height}, {request.steps} steps, highres "
            f"{request.highres_scale}, cfg {request.cfg}, {request.number_of_images} image(s), "
            f"{args.runs} timed runs after {args.warmup} warm-up"
        )

        # Our variants: the default engine; replayed CUDA graphs; torch.compile (opt-in).
        variants: list[tuple[str, bool, bool]] = [("ours", False, False)]
        if device.type == "cuda" and not args.no_cuda_graphs:
            variants.append(("ours+graphs", True, False))
        if args.compile:
            variants.append(("ours+compile", False, True))
        timings: list[tuple[str, float]] = []
        for label, cuda_graphs, compile_unet in variants:
            engine = _ours(
                model_dir,
                device,
                full_precision=False,
                cuda_graphs=cuda_graphs,
                compile_unet=compile_unet,
            )
            seconds, _ = _time(
                functools.partial(_run_ours, engine, subject, request),
                device,
                args.warmup,
                args.runs,
            )
            timings.append((label, seconds))
            del engine
            _free(device)
        plain = PlainICLight(model_dir, device, full_precision=False)
        plain_s, _ = _time(
            lambda seed: plain.process(subject, request, seed), device, args.warmup, args.runs
        )
        del plain
        _free(device)

        count = request.number_of_images
        print(f"{'':<14}{'s/request':>12}{'s/image':>10}{'images/s':>10}")
        for label, seconds in [*timings, ("plain", plain_s)]:
            print(f"{label:<14}{seconds:>12.3f}{seconds / count:>10.3f}{count / seconds:>10.2f}")
        for label, seconds in timings:
            print(f"speed-up (plain / {label}): {plain_s / seconds:.2f}x (goal: at least 2x)")

        if not args.skip_check:
            engine = _ours(model_dir, device, full_precision=True)
            ours_images = _run_ours(engine, subject, request, 1234)
            del engine
            _free(device)
            plain = PlainICLight(model_dir, device, full_precision=True)
            plain_images = plain.process(subject, request, 1234)
            del plain
            _free(device)
            difference = max(
                int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
                for a, b in zip(ours_images, plain_images, strict=True)
            )
            mean = float(
                np.mean(
                    [
                        np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
                        for a, b in zip(ours_images, plain_images, strict=True)
                    ]
                )
            )
            print(
                f"fp32, same seed: max abs pixel difference {difference}, "
                f"mean {mean:.4f} (0-255 scale)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
