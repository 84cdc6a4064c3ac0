"""The IC-Light fc engine on diffusers + torch (DESIGN.md §7).

It follows lllyasviel/IC-Light's `gradio_demo.py`: the subject is composited onto gray 127
(its alpha, else a configured matting model, else the whole image) and cropped to W×H; its VAE
latent is concatenated to the noisy latent at every call of the 8-channel UNet (offsets merged
once at load); a light direction becomes a gray gradient whose latent starts an img2img pass
at `lowres_denoise` ("None" starts from noise); the result is decoded, resized by
`highres_scale`, encoded again and refined by a second img2img pass at `highres_denoise`.
DPM++ 2M SDE Karras with the reference's betas; prompts in 75-token chunks; one generator per
request seeded from `seed`; the `number_of_images` variations run as one batch.

Nothing per request is stored on the engine (each call makes its own generator and
scheduler), so one engine serves concurrent threads.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from inference.engines.base import ProgressCallback
from inference.iclight.cuda_graphs import CudaGraphUNet
from inference.iclight.images import (
    MattingModel,
    UInt8Array,
    composite_on_gray,
    light_gradient,
    to_tensor,
    to_uint8,
)
from inference.iclight.prompts import encode_prompt_pair
from inference.iclight.sampling import Guidance, denoise, img2img_steps
from inference.iclight.weights import ICLightModel, load_model
from relight.images import resize_and_center_crop
from relight.params import LightSource, RelightParams

LATENT_CHANNELS = 4
# On CUDA a VAE call takes at most this many image pixels: twelve 3072² images in one decode
# would need well over 80 GB. Segmind's default request (≤ 12 × 768×960) still fits one call.
CUDA_VAE_BATCH_PIXELS = 12 * 768 * 960


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ICLightEngine:
    """IC-Light fc relighting (see the module docstring)."""

    name: str = "iclight"

    def __init__(
        self,
        model: ICLightModel,
        *,
        device: torch.device,
        matting: MattingModel | None = None,
        model_name: str = "iclight_sd15_fc",
        full_precision: bool = False,
        optimize: bool | None = None,
        compile_unet: bool = False,
        cuda_graphs: bool = False,
        vae_batch_pixels: int | None = None,
    ) -> None:
        """Move the networks to `device` and prepare them for inference.

        On CUDA the UNet and text encoder run in fp16 and the VAE in bf16 (as the reference),
        unless `full_precision`; on the CPU everything is fp32. `optimize` (default: on CUDA)
        fuses the attention QKV projections and uses channels-last memory; `compile_unet`
        wraps the UNet in `torch.compile`; `cuda_graphs` (CUDA only) replays the UNet as
        captured CUDA graphs, one per request shape. `vae_batch_pixels` caps the pixels of
        one VAE call (default: the whole batch on the CPU, as the reference;
        `CUDA_VAE_BATCH_PIXELS` on CUDA).
        """
        if cuda_graphs and (device.type != "cuda" or compile_unet):
            raise ValueError("cuda_graphs needs a CUDA device and excludes compile_unet")
        self.model = model_name
        self.device = device
        self.matting = matting
        on_cuda = device.type == "cuda"
        if vae_batch_pixels is None and on_cuda:
            vae_batch_pixels = CUDA_VAE_BATCH_PIXELS
        self.vae_batch_pixels = vae_batch_pixels
        half = on_cuda and not full_precision
        self.unet_dtype = torch.float16 if half else torch.float32
        self.vae_dtype = torch.bfloat16 if half else torch.float32
        self.tokenizer = model.tokenizer
        self.text_encoder = model.text_encoder.to(device=device, dtype=self.unet_dtype)
        self.vae = model.vae.to(device=device, dtype=self.vae_dtype)
        self.unet = model.unet.to(device=device, dtype=self.unet_dtype)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)

        self.unet.set_attn_processor(AttnProcessor2_0())
        self.vae.set_attn_processor(AttnProcessor2_0())
        if optimize if optimize is not None else on_cuda:
            self.unet.fuse_qkv_projections()
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
            if on_cuda:
                # Fixed shapes per request size: let cuDNN pick the fastest kernels once.
                torch.backends.cudnn.benchmark = True
        self._unet_module: torch.nn.Module = self.unet
        if compile_unet:
            self._unet_module = torch.compile(self.unet)  # type: ignore[assignment]
        # Dynamo's first trace of a shape is not thread-safe; later calls run concurrently.
        self._compile_lock = threading.Lock() if compile_unet else None
        self._compiled_shapes: set[tuple[int, ...]] = set()
        self._graphs = CudaGraphUNet(self.unet) if cuda_graphs else None

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
    ) -> ICLightEngine:
        """Load the model folder (layout in `inference.iclight.weights`) onto `device`.

        `device` None means CUDA when available, else the CPU; `matting_model` is an alpha
        matting program saved with `torch.export.save` (see `MattingModel`), used for
        subjects without alpha.
        """
        target = torch.device(device) if device is not None else default_device()
        model = load_model(model_dir)
        matting = MattingModel(matting_model, target) if matting_model is not None else None
        return cls(
            model,
            device=target,
            matting=matting,
            model_name=f"iclight_sd15_fc/{model_dir.name}",
            full_precision=full_precision,
            optimize=optimize,
            compile_unet=compile_unet,
            cuda_graphs=cuda_graphs,
        )

    def relight(
        self,
        subject: Image.Image,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]:
        """`params.number_of_images` RGB images of `params.output_size`, in one batch."""
        with torch.inference_mode():
            return self._relight(subject, params, seed, progress)

    def _relight(
        self,
        subject: Image.Image,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None,
    ) -> list[Image.Image]:
        width, height = params.width, params.height
        out_width, out_height = params.output_size
        count = params.number_of_images
        composite = composite_on_gray(subject, self.matting)

        lowres_steps = (
            params.steps
            if params.light_source is LightSource.NONE
            else img2img_steps(params.steps, params.lowres_denoise)[1]
        )
        total_steps = lowres_steps + img2img_steps(params.steps, params.highres_denoise)[1]
        done = 0

        def step_done() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(min(1.0, done / total_steps))

        if progress is not None:
            progress(0.0)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        cond, uncond = encode_prompt_pair(
            self.tokenizer, self.text_encoder, params.full_prompt, params.negative_prompt
        )
        # Encoded once, used by both passes.
        guidance = Guidance(
            cond=cond.repeat(count, 1, 1), uncond=uncond.repeat(count, 1, 1), scale=params.cfg
        )

        foreground = self.encode([_crop(composite, width, height)])
        gradient = light_gradient(params.light_source, width, height)
        latents = denoise(
            self._call_unet,
            init_latents=None if gradient is None else self.encode([gradient]),
            shape=(count, LATENT_CHANNELS, height // self.vae_scale, width // self.vae_scale),
            foreground=foreground,
            guidance=guidance,
            steps=params.steps,
            strength=params.lowres_denoise,
            generator=generator,
            dtype=self.unet_dtype,
            on_step=step_done,
        )

        resized = [
            np.asarray(
                Image.fromarray(pixels).resize((out_width, out_height), Image.Resampling.LANCZOS)
            )
            for pixels in self.decode(latents)
        ]
        latents = self.encode(resized)
        foreground = self.encode([_crop(composite, out_width, out_height)])
        latents = denoise(
            self._call_unet,
            init_latents=latents,
            shape=(
                count,
                LATENT_CHANNELS,
                out_height // self.vae_scale,
                out_width // self.vae_scale,
            ),
            foreground=foreground,
            guidance=guidance,
            steps=params.steps,
            strength=params.highres_denoise,
            generator=generator,
            dtype=self.unet_dtype,
            on_step=step_done,
        )
        images = [Image.fromarray(pixels, "RGB") for pixels in self.decode(latents)]
        if progress is not None:
            progress(1.0)
        return images

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

    def decode(self, latents: torch.Tensor) -> list[UInt8Array]:
        """uint8 H×W×3 images of latents, quantised as the reference does (one VAE call)."""
        pixels_per_image = latents.shape[-2] * latents.shape[-1] * self.vae_scale**2
        images: list[UInt8Array] = []
        for part in self._vae_batches(latents.shape[0], pixels_per_image):
            scaled = latents[part].to(self.vae_dtype) / self.scaling_factor
            images.extend(to_uint8(self.vae.decode(scaled).sample))
        return images

    def _vae_batches(self, count: int, pixels_per_image: int) -> list[slice]:
        per_call = count
        if self.vae_batch_pixels is not None:
            per_call = max(1, self.vae_batch_pixels // pixels_per_image)
        return [slice(start, start + per_call) for start in range(0, count, per_call)]

    def _call_unet(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        if self._graphs is not None:
            return self._graphs(sample, timestep, hidden_states)
        if self._compile_lock is not None:
            shape = (*sample.shape, hidden_states.shape[1])
            if shape not in self._compiled_shapes:
                with self._compile_lock:
                    out = self._unet_module(
                        sample, timestep, encoder_hidden_states=hidden_states, return_dict=False
                    )[0]
                    self._compiled_shapes.add(shape)
                    return out  # type: ignore[no-any-return]
        result = self._unet_module(
            sample, timestep, encoder_hidden_states=hidden_states, return_dict=False
        )
        return result[0]  # type: ignore[no-any-return]


def _crop(image: Image.Image, width: int, height: int) -> UInt8Array:
    return np.asarray(resize_and_center_crop(image, width, height), dtype=np.uint8)
