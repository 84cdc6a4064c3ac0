"""The IC-Light engine on diffusers + torch: the fc and fbc models.

fc follows lllyasviel/IC-Light's `gradio_demo.py`: the subject is composited onto gray 127
(its alpha, else the matting: a configured exported program, else the folder's BRIA RMBG-1.4 run
as the demo's `run_rmbg`, else none and the whole image is the subject) and cropped to W×H; its VAE
latent is concatenated to the noisy latent at every call of the 8-channel UNet (offsets merged
once at load); a light direction becomes a gray gradient whose latent starts an img2img pass
at `lowres_denoise` ("None" starts from noise); the result is decoded, resized by
`highres_scale`, encoded again and refined by a second img2img pass at `highres_denoise`.
DPM++ 2M SDE Karras with the reference's betas; prompts in 75-token chunks; one generator per
request seeded from `seed`; the `number_of_images` variations run as one batch.

fbc (a request with `background_source`) follows `gradio_demo_bg.py`: the subject and the
background (the uploaded one, mirrored or not, a 224 → 32 gradient, or gray 64) are cropped and
encoded together, and both latents ride with the noisy latent into the 12-channel UNet; the
low-res pass always starts from noise; the high-res pass is as fc's, with both conditions
recomputed at the new size, and the result is quantised the way that demo does it.

Nothing per request is stored on the engine (each call makes its own generator and
scheduler), so one engine serves concurrent threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from inference.engines.base import ProgressCallback, ProgressCounter
from inference.iclight.batching import BatchObserver, PassBatcher
from inference.iclight.determinism import configure_determinism
from inference.iclight.images import (
    Matting,
    MattingModel,
    RMBGMatting,
    UInt8Array,
    background_for,
    composite_on_gray,
    light_gradient,
    to_tensor,
    to_uint8,
    to_uint8_via_unit,
)
from inference.iclight.memory import (
    DeviceOutOfMemory,
    TorchOutOfMemory,
    out_of_memory,
    release_cached_memory,
)
from inference.iclight.prompts import encode_prompt_pair
from inference.iclight.rmbg import has_rmbg
from inference.iclight.sampling import (
    Guidance,
    PassJob,
    PassShape,
    denoise_steps,
    denoise_together,
    img2img_steps,
    pass_shape,
)
from inference.iclight.unet_runner import UNetRunner
from inference.iclight.weights import ICLightModel, Variant, load_model
from relight.core.images import resize_and_center_crop
from relight.core.params import BackgroundSource, RelightParams

LATENT_CHANNELS = 4
# On CUDA a VAE call takes at most this many image pixels: twelve 3072² images in one decode
# would need well over 80 GB. Segmind's default request (≤ 12 × 768×960) still fits one call.
CUDA_VAE_BATCH_PIXELS = 12 * 768 * 960


# The warm-up render's size (the smallest a request may ask for).
WARM_UP_SIZE = 256


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelNotLoaded(ValueError):
    """The request needs a model variant this engine's folder does not have."""


class ICLightEngine:
    """IC-Light relighting, fc and/or fbc (see the module docstring)."""

    name: str = "iclight"

    def __init__(
        self,
        model: ICLightModel,
        *,
        device: torch.device,
        matting: Matting | None = None,
        model_name: str = "iclight_sd15_fc",
        full_precision: bool = False,
        optimize: bool | None = None,
        compile_unet: bool = False,
        cuda_graphs: bool = False,
        vae_batch_pixels: int | None = None,
        max_batch_images: int = 1,
        batch_window_s: float = 0.02,
        batch_observer: BatchObserver | None = None,
        deterministic: bool = False,
    ) -> None:
        """Move the networks to `device` and prepare them for inference.

        On CUDA the UNet and text encoder run in fp16 and the VAE in bf16 (as the reference),
        unless `full_precision`; on the CPU everything is fp32. `optimize` (default: on CUDA)
        fuses the attention QKV projections and uses channels-last memory; `compile_unet`
        wraps the UNet in `torch.compile`; `cuda_graphs` (CUDA only) replays the UNet as
        captured CUDA graphs, one per request shape. `vae_batch_pixels` caps the pixels of
        one VAE call (default: the whole batch on the CPU, as the reference;
        `CUDA_VAE_BATCH_PIXELS` on CUDA). `max_batch_images` above 1 lets concurrent requests
        (on other threads) share denoising passes, up to that many images per UNet batch,
        waiting at most `batch_window_s` for company (`inference.iclight.batching`).
        `deterministic` sets torch's process-wide flags for reproducible pixels
        (`inference.iclight.determinism`); otherwise an optimized CUDA engine autotunes cuDNN.
        """
        if cuda_graphs and (device.type != "cuda" or compile_unet):
            raise ValueError("cuda_graphs needs a CUDA device and excludes compile_unet")
        self.model = model_name
        self.device = device
        self.matting = matting
        # What cuts out subjects without alpha, for /healthz: "rmbg-1.4", "exported:<file>".
        self.matting_name: str | None = matting.name if matting is not None else None
        on_cuda = device.type == "cuda"
        if vae_batch_pixels is None and on_cuda:
            vae_batch_pixels = CUDA_VAE_BATCH_PIXELS
        self.vae_batch_pixels = vae_batch_pixels
        half = on_cuda and not full_precision
        self.unet_dtype = torch.float16 if half else torch.float32
        self.vae_dtype = torch.bfloat16 if half else torch.float32
        self.tokenizer = model.tokenizer
        self.text_encoder = model.text_encoder.to(device=device, dtype=self.unet_dtype)
        optimize = optimize if optimize is not None else on_cuda
        configure_determinism(deterministic, autotune=optimize and on_cuda)
        self._prepare_vae(model, optimize)
        self._prepare_unets(model, optimize, compile_unet, cuda_graphs)
        self.batcher = (
            PassBatcher(
                max_images=max_batch_images, window_s=batch_window_s, observer=batch_observer
            )
            if max_batch_images > 1
            else None
        )
        self.batch_observer = batch_observer

    def _prepare_unets(
        self, model: ICLightModel, optimize: bool, compile_unet: bool, cuda_graphs: bool
    ) -> None:
        self.runners = {
            variant: UNetRunner(
                unet,
                device=self.device,
                dtype=self.unet_dtype,
                optimize=optimize,
                compile_unet=compile_unet,
                cuda_graphs=cuda_graphs,
            )
            for variant, unet in model.unets.items()
        }
        self.variants = list(self.runners)
        self.serves_backgrounds = Variant.FBC in self.runners

    def _prepare_vae(self, model: ICLightModel, optimize: bool) -> None:
        self.vae = model.vae.to(device=self.device, dtype=self.vae_dtype)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.vae.set_attn_processor(AttnProcessor2_0())
        if optimize:
            self.vae.to(memory_format=torch.channels_last)

    @property
    def unet(self) -> UNet2DConditionModel:
        """The fc model's merged UNet (the fbc one when the folder has only fbc)."""
        runner = self.runners.get(Variant.FC) or self.runners[Variant.FBC]
        return runner.unet

    @classmethod
    def from_dir(
        cls,
        model_dir: Path,
        *,
        device: str | None = None,
        matting_model: Path | None = None,
        full_precision: bool = False,
        optimize: bool | None = None,
        compile_unet: bool = False,
        cuda_graphs: bool = False,
        max_batch_images: int = 1,
        batch_window_s: float = 0.02,
        batch_observer: BatchObserver | None = None,
        deterministic: bool = False,
    ) -> ICLightEngine:
        """Load the model folder (layout in `inference.iclight.weights`) onto `device`.

        `device` None means CUDA when available, else the CPU. Subjects without alpha are cut
        out by `matting_model`, an alpha matting program saved with `torch.export.save` (see
        `MattingModel`), when given; else by BRIA RMBG-1.4 when the folder has `rmbg/` (see
        `RMBGMatting`: the demo's matting); else not at all. Every variant whose offsets the
        folder has is served.
        """
        target = torch.device(device) if device is not None else default_device()
        model = load_model(model_dir)
        matting: Matting | None = None
        if matting_model is not None:
            matting = MattingModel(matting_model, target)
        elif has_rmbg(model_dir):
            matting = RMBGMatting.from_model_dir(model_dir, target)
        variants = "+".join(variant.value for variant in model.unets)
        return cls(
            model,
            device=target,
            matting=matting,
            model_name=f"iclight_sd15_{variants}/{model_dir.name}",
            full_precision=full_precision,
            optimize=optimize,
            compile_unet=compile_unet,
            cuda_graphs=cuda_graphs,
            max_batch_images=max_batch_images,
            batch_window_s=batch_window_s,
            batch_observer=batch_observer,
            deterministic=deterministic,
        )

    def relight(
        self,
        subject: Image.Image,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None = None,
        background: Image.Image | None = None,
    ) -> list[Image.Image]:
        """`params.number_of_images` RGB images of `params.output_size`, in one batch.

        With `params.background_source` the fbc model relights onto the background (the
        `background` image for the sources that need one); otherwise the fc model runs.
        ModelNotLoaded when the folder lacks the variant; ValueError when a background is
        needed and missing.
        """
        variant = Variant.FC if params.background_source is None else Variant.FBC
        runner = self.runners.get(variant)
        if runner is None:
            raise ModelNotLoaded(
                f"this engine has no IC-Light {variant.value} model "
                f"(its folder lacks {variant.offsets_file})"
            )
        try:
            if self.batcher is None:
                with torch.inference_mode():
                    return self._relight(
                        runner, variant, subject, background, params, seed, progress
                    )
            with self.batcher.request(), torch.inference_mode():
                return self._relight(runner, variant, subject, background, params, seed, progress)
        except (TorchOutOfMemory, DeviceOutOfMemory) as exc:
            # Raised afresh below, once this block has dropped `exc` and the frames it held.
            error = out_of_memory(exc)
        release_cached_memory(self.device)
        raise error

    def warm_up(self) -> list[Variant]:
        """One tiny render per loaded model (fc, fbc), so the first request pays no lazy
        initialisation (CUDA context, cuDNN autotuning, allocator growth); the variants warmed."""
        subject = Image.new("RGB", (WARM_UP_SIZE, WARM_UP_SIZE), (128, 128, 128))
        # Unobserved: the node's pass metrics count requests' passes only (nothing else runs
        # yet, so muting the observers here races with nobody).
        observer, self.batch_observer = self.batch_observer, None
        if self.batcher is not None:
            self.batcher.observer = None
        try:
            self._warm_up(subject)
        finally:
            self.batch_observer = observer
            if self.batcher is not None:
                self.batcher.observer = observer
        return list(self.variants)

    def _warm_up(self, subject: Image.Image) -> None:
        for variant in self.variants:
            params = RelightParams(
                prompt="warm-up",
                width=WARM_UP_SIZE,
                height=WARM_UP_SIZE,
                steps=1,
                highres_scale=1.0,
                background_source=None if variant is Variant.FC else BackgroundSource.AMBIENT,
            )
            self.relight(subject, params, 0)

    def _relight(
        self,
        unet: UNetRunner,
        variant: Variant,
        subject: Image.Image,
        background: Image.Image | None,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None,
    ) -> list[Image.Image]:
        width, height = params.width, params.height
        out_width, out_height = params.output_size
        composite = composite_on_gray(subject, self.matting)
        source = params.background_source
        scene = None if source is None else background_for(source, background, width, height)
        gradient = (
            None if source is not None else light_gradient(params.light_source, width, height)
        )
        steps = ProgressCounter(progress, _denoising_steps(params, gradient is not None))
        if progress is not None:
            progress(0.0)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        guidance = self._guidance(params)  # encoded once, used by both passes

        def job(condition: torch.Tensor, init_latents: torch.Tensor | None) -> PassJob:
            return PassJob(
                count=params.number_of_images,
                condition=condition,
                guidance=guidance,
                generator=generator,
                init_latents=init_latents,
                on_step=steps.advance,
            )

        lowres = job(
            self._condition(composite, scene, width, height),
            None if gradient is None else self.encode([gradient]),
        )
        latents = self._denoise(
            unet, variant, lowres, (width, height), params.steps, params.lowres_denoise
        )
        resized = [
            np.asarray(
                Image.fromarray(pixels).resize((out_width, out_height), Image.Resampling.LANCZOS)
            )
            for pixels in self.decode(latents)
        ]
        highres = job(
            self._condition(composite, scene, out_width, out_height), self.encode(resized)
        )
        latents = self._denoise(
            unet, variant, highres, params.output_size, params.steps, params.highres_denoise
        )
        quantise = to_uint8 if source is None else to_uint8_via_unit
        images = [Image.fromarray(pixels, "RGB") for pixels in self.decode(latents, quantise)]
        if progress is not None:
            progress(1.0)
        return images

    def _guidance(self, params: RelightParams) -> Guidance:
        """The prompt pair's embeddings, repeated for `params.number_of_images`."""
        count = params.number_of_images
        cond, uncond = encode_prompt_pair(
            self.tokenizer, self.text_encoder, params.full_prompt, params.negative_prompt
        )
        return Guidance(
            cond=cond.repeat(count, 1, 1), uncond=uncond.repeat(count, 1, 1), scale=params.cfg
        )

    def _denoise(
        self,
        unet: UNetRunner,
        variant: Variant,
        job: PassJob,
        image_size: tuple[int, int],
        steps: int,
        strength: float,
    ) -> torch.Tensor:
        """Run one pass for `job`: alone, or batched with concurrent requests of its shape."""
        width, height = image_size
        latent = (job.count, LATENT_CHANNELS, height // self.vae_scale, width // self.vae_scale)
        shape = pass_shape(job, latent, steps, strength, self.unet_dtype)

        def pass_steps(shape: PassShape, jobs: list[PassJob]) -> Iterator[list[PassJob]]:
            return denoise_steps(unet, shape, jobs, drop_departed=not unet.fixed_shapes)

        if self.batcher is None:
            started = perf_counter()
            try:
                denoise_together(unet, shape, [job])
            except TorchOutOfMemory as exc:
                job.error = out_of_memory(exc)
            if self.batch_observer is not None and job.error is None:
                seconds = perf_counter() - started
                self.batch_observer.pass_ran(job.count, 1, shape.steps_run, seconds)
        else:
            self.batcher.run((variant.value, shape), job, pass_steps)
        if isinstance(job.error, DeviceOutOfMemory):
            # A new one: raising `job.error` itself would tie it to this frame, which holds
            # `job` (a cycle the collector alone can break).
            raise DeviceOutOfMemory(job.error.message) from None
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _condition(
        self, composite: Image.Image, scene: UInt8Array | None, width: int, height: int
    ) -> torch.Tensor:
        """What rides with the noisy latent: (1, 4, h, w) subject, or (1, 8, h, w) subject and
        background, encoded in one VAE call as the reference does."""
        if scene is None:
            return self.encode([_crop(composite, width, height)])
        pair = self.encode(
            [_crop(composite, width, height), _crop(Image.fromarray(scene), width, height)]
        )
        # Side by side on the channel axis, built from per-image views as the reference builds
        # it: the result's memory layout (and so the UNet's conv kernels) then match too.
        return torch.cat([latent[None] for latent in pair], dim=1)

    def encode(self, images: list[UInt8Array]) -> torch.Tensor:
        """VAE latents (mode, scaled) of uint8 H×W×3 images, in the UNet's dtype.

        The batch goes through the VAE in one call, as the reference does (a batch rounds
        differently from single images), split only beyond `vae_batch_pixels`.
        """
        height, width = images[0].shape[:2]
        latents = [
            self.vae.encode(
                to_tensor(images[part]).to(device=self.device, dtype=self.vae_dtype)
            ).latent_dist.mode()
            * self.scaling_factor
            for part in self._vae_batches(len(images), width * height)
        ]
        return torch.cat(latents).to(self.unet_dtype)

    def decode(
        self,
        latents: torch.Tensor,
        quantise: Callable[[torch.Tensor], list[UInt8Array]] = to_uint8,
    ) -> list[UInt8Array]:
        """uint8 H×W×3 images of latents, quantised as the reference does (one VAE call)."""
        pixels_per_image = latents.shape[-2] * latents.shape[-1] * self.vae_scale**2
        images: list[UInt8Array] = []
        for part in self._vae_batches(latents.shape[0], pixels_per_image):
            scaled = latents[part].to(self.vae_dtype) / self.scaling_factor
            images.extend(quantise(self.vae.decode(scaled).sample))
        return images

    def _vae_batches(self, count: int, pixels_per_image: int) -> list[slice]:
        per_call = count
        if self.vae_batch_pixels is not None:
            per_call = max(1, self.vae_batch_pixels // pixels_per_image)
        return [slice(start, start + per_call) for start in range(0, count, per_call)]


def _denoising_steps(params: RelightParams, from_gradient: bool) -> int:
    """UNet steps of both passes: the low-res one is img2img when it starts from a gradient."""
    lowres = params.steps
    if from_gradient:
        lowres = img2img_steps(params.steps, params.lowres_denoise)[1]
    return lowres + img2img_steps(params.steps, params.highres_denoise)[1]


def _crop(image: Image.Image, width: int, height: int) -> UInt8Array:
    return np.asarray(resize_and_center_crop(image, width, height), dtype=np.uint8)
