"""IC-Light on a GPU: our engine against the plain diffusers pipelines, at Segmind's defaults.

Run as `.venv/bin/python bench/node_gpu.py` on a CUDA machine. It writes a model folder with
the full-size SD1.5 architecture and random weights (built from config in code, no hub), then
times, in the same run and on the same request (512×640, 25 steps, highres 1.5, cfg 2):

- **ours**: `ICLightEngine` (merged fp16 UNet with fused QKV projections, channels-last,
  cuDNN autotuning, prompts encoded once, per-request scheduler), and the same with the UNet
  replayed as CUDA graphs (`ours+graphs`), and with `--compile` under torch.compile;
- **plain**: the reference demo as `tests/inference/reference_demo.py` re-implements it (the
  conformance test's independent version, sharing no helper with the engine):
  StableDiffusionPipeline and StableDiffusionImg2ImgPipeline sharing the hooked 8-channel UNet,
  fp16 UNet, bf16 VAE, SDPA, as `gradio_demo.py` runs it.

It prints seconds per image, images per second, the speed-up (goal: at least 2×) and, on CUDA,
the peak GPU memory of each of our variants; then runs the reference once more in fp32 and
compares, on the same seed, ours in fp32 and (on CUDA) ours at a node's precisions (fp16 UNet,
bf16 VAE) with it: largest and mean pixel difference. On CUDA it also runs the reference in
fp16 and compares ours in fp16 with the optimisations off (no fused QKV, no channels-last) with
it, so a precision loss of ours shows apart from fp16's own. The reference runs with cuDNN
autotuning off (as the demo does), whatever our engine set before it.

Without CUDA it prints that it was not run and exits 0. `--tiny --device cpu` runs the same
script end to end with the tiny test model on the CPU (both versions in fp32), which is how
the test suite checks it.
"""

from __future__ import annotations

import argparse
import functools
import gc
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

from bench.cli import parse_args  # noqa: E402

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


def _run_reference(
    reference: Any, subject: Image.Image, request: Request, seed: int
) -> list[UInt8Array]:
    """The reference demo's `process()` (tests/inference/reference_demo.py) on `request`."""
    from tests.inference.reference_demo import demo_arguments

    images: list[UInt8Array] = reference.process(
        np.asarray(subject.convert("RGB")), **demo_arguments(_params(request), seed)
    )
    return images


def _reference(model_dir: Path, device: torch.device, *, half: bool) -> Any:
    from tests.inference.reference_demo import ReferenceDemo

    return ReferenceDemo(model_dir, device, half=half)


def _difference(ours: list[UInt8Array], theirs: list[UInt8Array]) -> tuple[int, float]:
    """Largest and mean absolute pixel difference (0-255 scale) over all images."""
    pairs = [
        np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(ours, theirs, strict=True)
    ]
    return max(int(d.max()) for d in pairs), float(np.mean([d.mean() for d in pairs]))


def _ours(
    model_dir: Path,
    device: torch.device,
    *,
    full_precision: bool,
    cuda_graphs: bool = False,
    compile_unet: bool = False,
    optimize: bool | None = None,
) -> Any:
    from inference.engines.iclight import ICLightEngine

    return ICLightEngine.from_dir(
        model_dir,
        device=str(device),
        full_precision=full_precision,
        optimize=optimize,
        cuda_graphs=cuda_graphs,
        compile_unet=compile_unet,
    )


def _params(request: Request) -> Any:
    from relight.core.params import RelightParams

    return RelightParams(
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


def _run_ours(engine: Any, subject: Image.Image, request: Request, seed: int) -> list[UInt8Array]:
    return [np.asarray(image) for image in engine.relight(subject, _params(request), seed)]


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
    args = parse_args(
        parser, tiny=True, width=256, height=320, steps=2, runs=1, warmup=0, skip_check=True
    )

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
        peaks: list[tuple[str, float]] = []
        for label, cuda_graphs, compile_unet in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
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
            if device.type == "cuda":
                peaks.append((label, torch.cuda.max_memory_allocated(device) / 2**30))
            del engine
            _free(device)
        # The demo never turns cuDNN autotuning on; our engine did, process-wide.
        torch.backends.cudnn.benchmark = False
        reference = _reference(model_dir, device, half=device.type == "cuda")
        plain_s, _ = _time(
            functools.partial(_run_reference, reference, subject, request),
            device,
            args.warmup,
            args.runs,
        )
        del reference
        _free(device)

        count = request.number_of_images
        print(f"{'':<14}{'s/request':>12}{'s/image':>10}{'images/s':>10}")
        for label, seconds in [*timings, ("plain", plain_s)]:
            print(f"{label:<14}{seconds:>12.3f}{seconds / count:>10.3f}{count / seconds:>10.2f}")
        for label, seconds in timings:
            print(f"speed-up (plain / {label}): {plain_s / seconds:.2f}x (goal: at least 2x)")
        for label, gib in peaks:
            print(f"peak GPU memory, {label}: {gib:.2f} GiB")

        if not args.skip_check:
            # The reference in fp32 against ours in fp32 (bit-identical on the CPU with one
            # thread) and, on CUDA, against ours at the precisions a node serves (fp16/bf16).
            reference = _reference(model_dir, device, half=False)
            theirs = _run_reference(reference, subject, request, 1234)
            del reference
            _free(device)
            precisions = [("fp32", True)]
            if device.type == "cuda":
                precisions.append(("fp16", False))
            for label, full_precision in precisions:
                engine = _ours(model_dir, device, full_precision=full_precision)
                ours = _run_ours(engine, subject, request, 1234)
                del engine
                _free(device)
                largest, mean = _difference(ours, theirs)
                print(
                    f"ours {label} vs reference fp32, same seed: max abs pixel difference "
                    f"{largest}, mean {mean:.4f} (0-255 scale)"
                )
            if device.type == "cuda":
                # fp16 against fp16: what our own changes cost, apart from fp16's rounding.
                reference = _reference(model_dir, device, half=True)
                theirs = _run_reference(reference, subject, request, 1234)
                del reference
                _free(device)
                engine = _ours(model_dir, device, full_precision=False, optimize=False)
                ours = _run_ours(engine, subject, request, 1234)
                del engine
                _free(device)
                largest, mean = _difference(ours, theirs)
                print(
                    f"ours fp16 (optimisations off) vs reference fp16, same seed: max abs pixel "
                    f"difference {largest}, mean {mean:.4f} (0-255 scale)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
