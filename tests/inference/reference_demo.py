"""A plain, independent re-implementation of IC-Light's reference demos (fc and fbc models).

lllyasviel/IC-Light's `gradio_demo.py` relights with `process()`: crop the foreground, encode it,
build the prompt pair, run diffusers' StableDiffusionPipeline (no light) or
StableDiffusionImg2ImgPipeline (from a gray gradient) with a UNet whose `forward` is hooked to
concatenate the foreground latent, decode, resize by `highres_scale`, encode again and refine
with the img2img pipeline. This module does the same, written from that description and the
demo's arithmetic, on diffusers' public pipelines, and shares **no helper** with Relight's
engine: its own loading and widening of the UNet, crop, gradients, prompt chunking, scheduler
and pixel conversions. The conformance test (`test_reference_conformance.py`) and
`bench/node_gpu.py` hold the engine to it. `process_background()` does the same for
`gradio_demo_bg.py`'s `process()` (the fbc model: a 12-channel UNet that sees the foreground and
the background latents, a text-to-image first pass, its own output quantisation).

It takes the foreground as the demo's `process()` does: a uint8 RGB array already composited on
gray. The demos' `process_relight()` mattes every upload with BRIA RMBG-1.4 first: `run_rmbg()`
here is that step, written from the demo's `run_rmbg` line by line (its feed size, its
`numpy2pytorch` scaling, the network's first output, bilinear back, clip, `127 + (img − 127) ·
alpha`); only the network's forward pass is Relight's module (`inference.iclight.rmbg.BriaRMBG`,
the reference's `briarmbg.py` architecture), loaded here from the folder's `rmbg/` as the demo
loads the hub's. `composite_by_alpha` is the same compositing with a subject's own alpha.

Where it must depart from the demo it departs as Relight does, on purpose (README, "IC-Light
model folder"): an empty text (a blank negative prompt) is encoded as one piece of start and
end tokens, where the demo's encoder fails on zero tokens.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors.torch
import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from inference.iclight.rmbg import BriaRMBG
from relight.core.params import RelightParams

Pixels = npt.NDArray[np.uint8]


def demo_arguments(params: RelightParams, seed: int) -> dict[str, Any]:
    """A request as the keyword arguments of the demos' `process()` (the fc demo's `bg_source`
    is the light source, the fbc demo's the background source; `lowres_denoise` is fc's)."""
    arguments: dict[str, Any] = {
        "prompt": params.prompt,
        "image_width": params.width,
        "image_height": params.height,
        "num_samples": params.number_of_images,
        "seed": seed,
        "steps": params.steps,
        "a_prompt": params.appended_prompt,
        "n_prompt": params.negative_prompt,
        "cfg": params.cfg,
        "highres_scale": params.highres_scale,
        "highres_denoise": params.highres_denoise,
    }
    if params.background_source is not None:
        return {**arguments, "bg_source": params.background_source.value}
    return {
        **arguments,
        "lowres_denoise": params.lowres_denoise,
        "bg_source": params.light_source.value,
    }


def composite_by_alpha(rgba: Image.Image) -> Pixels:
    """The demo's matting step (`127 + (img - 127) · alpha`) with the image's own alpha."""
    pixels = np.asarray(rgba.convert("RGBA"))
    alpha = pixels[..., 3:].astype(np.float32) / 255.0
    mixed = 127 + (pixels[..., :3].astype(np.float32) - 127) * alpha
    return mixed.clip(0, 255).astype(np.uint8)


def load_rmbg_network(directory: Path) -> BriaRMBG:
    """RMBG-1.4 from `directory/model.safetensors`, in fp32 and eval mode as the demo runs it
    (`BriaRMBG.from_pretrained` puts the model in eval mode; the demo moves it to fp32)."""
    state = safetensors.torch.load_file(str(directory / "model.safetensors"))
    network = BriaRMBG(width=state["conv_in.weight"].shape[0])
    network.load_state_dict(state, strict=True)
    return network.to(dtype=torch.float32).eval()


@torch.inference_mode()
def run_rmbg(
    network: torch.nn.Module, img: Pixels, sigma: float = 0.0
) -> tuple[Pixels, npt.NDArray[np.float32]]:
    """The demo's `run_rmbg`: the subject composited on gray by RMBG's matte, and the matte."""
    height, width, channels = img.shape
    assert channels == 3
    k = (256.0 / float(height * width)) ** 0.5
    feed = resize(img, int(64 * round(width * k)), int(64 * round(height * k)))
    batch = to_model([feed]).to(dtype=torch.float32)
    alpha = network(batch)[0][0]
    alpha = torch.nn.functional.interpolate(alpha, size=(height, width), mode="bilinear")
    alpha = alpha.movedim(1, -1)[0]
    matte: npt.NDArray[np.float32] = alpha.detach().float().cpu().numpy().clip(0, 1)
    result = 127 + (img.astype(np.float32) - 127 + sigma) * matte
    return result.clip(0, 255).astype(np.uint8), matte


def center_crop(image: Pixels, width: int, height: int) -> Pixels:
    """Resize the whole image to cover width×height (LANCZOS), then crop the centre."""
    picture = Image.fromarray(image)
    factor = max(width / picture.width, height / picture.height)
    new_width = round(picture.width * factor)
    new_height = round(picture.height * factor)
    resized = picture.resize((new_width, new_height), Image.Resampling.LANCZOS)
    box = (
        (new_width - width) / 2,
        (new_height - height) / 2,
        (new_width + width) / 2,
        (new_height + height) / 2,
    )
    return np.array(resized.crop(box))


def resize(image: Pixels, width: int, height: int) -> Pixels:
    return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def gradient(light: str, width: int, height: int) -> Pixels | None:
    """The demo's initial image for a light direction; None for "None"."""
    if light == "None":
        return None
    ramps = {
        "Left Light": (np.linspace(255, 0, width), False),
        "Right Light": (np.linspace(0, 255, width), False),
        "Top Light": (np.linspace(255, 0, height), True),
        "Bottom Light": (np.linspace(0, 255, height), True),
    }
    ramp, vertical = ramps[light]
    plane = np.tile(ramp[:, None], (1, width)) if vertical else np.tile(ramp, (height, 1))
    return np.stack([plane, plane, plane], axis=-1).astype(np.uint8)


def background(source: str, image: Pixels | None, width: int, height: int) -> Pixels:
    """The fbc demo's background for a source (its values, its 224/32 gradients, gray 64)."""
    if source == "Use Background Image":
        assert image is not None
        return image
    if source == "Use Flipped Background Image":
        assert image is not None
        return np.fliplr(image)
    if source == "Ambient":
        return np.zeros(shape=(height, width, 3), dtype=np.uint8) + 64
    ramps = {
        "Left Light": (np.linspace(224, 32, width), False),
        "Right Light": (np.linspace(32, 224, width), False),
        "Top Light": (np.linspace(224, 32, height), True),
        "Bottom Light": (np.linspace(32, 224, height), True),
    }
    ramp, vertical = ramps[source]
    plane = np.tile(ramp[:, None], (1, width)) if vertical else np.tile(ramp, (height, 1))
    return np.stack([plane, plane, plane], axis=-1).astype(np.uint8)


def to_model(images: list[Pixels]) -> torch.Tensor:
    """uint8 images → N×3×H×W with 127 exactly 0 (the demo divides by 127, not 127.5)."""
    stacked = torch.from_numpy(np.stack(images)).float() / 127.0 - 1.0
    return stacked.movedim(-1, 1)


def to_pixels(decoded: torch.Tensor) -> list[Pixels]:
    """Decoder output → uint8 images, image by image, as the demo quantises them."""
    out = []
    for image in decoded:
        scaled = image.movedim(0, -1) * 127.5 + 127.5
        out.append(scaled.detach().float().cpu().numpy().clip(0, 255).astype(np.uint8))
    return out


class ReferenceDemo:
    """The demos' pipelines on diffusers' pipelines (see the module docstring)."""

    def __init__(
        self, model_dir: Path, device: torch.device, *, half: bool = False, model: str = "fc"
    ) -> None:
        """Load the model folder as the demo loads its hub folders, widen and merge the UNet.

        `half`: the demo's precisions (fp16 text encoder and UNet, bf16 VAE); else all fp32.
        `model`: "fc" (8-channel UNet, `process`) or "fbc" (12 channels, `process_background`).
        The folder's `rmbg/`, when it has one, is the matting network of `process_relight` and
        `process_relight_background`.
        """
        self.device = device
        rmbg_dir = model_dir / "rmbg"
        has_rmbg = (rmbg_dir / "model.safetensors").is_file()
        self.rmbg = load_rmbg_network(rmbg_dir).to(device) if has_rmbg else None
        self.tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
        # The demo's hub weights load in fp32; the offsets are merged in fp32 before any cast.
        fp32 = torch.float32
        text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder", torch_dtype=fp32)
        vae = AutoencoderKL.from_pretrained(model_dir / "vae", torch_dtype=fp32)
        unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", torch_dtype=fp32)

        with torch.no_grad():
            old = unet.conv_in
            channels = 8 if model == "fc" else 12
            wide = torch.nn.Conv2d(
                channels, old.out_channels, old.kernel_size, old.stride, old.padding
            )
            wide.weight.zero_()
            wide.weight[:, :4].copy_(old.weight)
            wide.bias = old.bias
            unet.conv_in = wide
        original_forward = unet.forward

        def forward_with_foreground(
            sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, **kw: Any
        ) -> Any:
            foreground = kw["cross_attention_kwargs"]["concat_conds"].to(sample)
            repeats = sample.shape[0] // foreground.shape[0]
            widened = torch.cat([sample, torch.cat([foreground] * repeats)], dim=1)
            kw["cross_attention_kwargs"] = {}
            return original_forward(widened, timestep, encoder_hidden_states, **kw)

        unet.forward = forward_with_foreground
        offsets = safetensors.torch.load_file(str(model_dir / f"iclight_sd15_{model}.safetensors"))
        unet.load_state_dict({k: v + offsets[k] for k, v in unet.state_dict().items()})

        low = torch.float16 if half else torch.float32
        self.text_encoder = text_encoder.to(device=device, dtype=low)
        self.vae = vae.to(device=device, dtype=torch.bfloat16 if half else torch.float32)
        self.unet = unet.to(device=device, dtype=low)
        self.unet.set_attn_processor(AttnProcessor2_0())
        self.vae.set_attn_processor(AttnProcessor2_0())

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
            "tokenizer": self.tokenizer,
            "unet": self.unet,
            "scheduler": scheduler,
            "safety_checker": None,
            "requires_safety_checker": False,
            "feature_extractor": None,
            "image_encoder": None,
        }
        self.text_to_image = StableDiffusionPipeline(**parts)
        self.image_to_image = StableDiffusionImg2ImgPipeline(**parts)
        for pipe in (self.text_to_image, self.image_to_image):
            pipe.set_progress_bar_config(disable=True)

    def encode_text(self, text: str) -> torch.Tensor:
        """Hidden states of `text` in 75-token pieces, one row per piece."""
        length = self.tokenizer.model_max_length
        start, end = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        ids = self.tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"]
        pieces = [ids[i : i + length - 2] for i in range(0, len(ids), length - 2)] or [[]]
        rows = [[start, *piece, end] for piece in pieces]
        rows = [row + [end] * (length - len(row)) for row in rows]
        tokens = torch.tensor(rows, dtype=torch.int64, device=self.device)
        hidden: torch.Tensor = self.text_encoder(tokens).last_hidden_state
        return hidden

    def encode_pair(self, positive: str, negative: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Both texts with the same number of pieces (the shorter repeated), pieces side by side."""
        c, uc = self.encode_text(positive), self.encode_text(negative)
        count = max(len(c), len(uc))
        c = torch.cat([c] * math.ceil(count / len(c)))[:count]
        uc = torch.cat([uc] * math.ceil(count / len(uc)))[:count]
        return torch.cat(list(c), dim=0)[None], torch.cat(list(uc), dim=0)[None]

    def vae_encode(self, images: list[Pixels]) -> torch.Tensor:
        pixels = to_model(images).to(device=self.vae.device, dtype=self.vae.dtype)
        latent: torch.Tensor = self.vae.encode(pixels).latent_dist.mode()
        scaled: torch.Tensor = latent * self.vae.config.scaling_factor
        return scaled

    @torch.inference_mode()
    def process(
        self,
        input_fg: Pixels,
        *,
        prompt: str,
        image_width: int,
        image_height: int,
        num_samples: int,
        seed: int,
        steps: int,
        a_prompt: str,
        n_prompt: str,
        cfg: float,
        highres_scale: float,
        highres_denoise: float,
        lowres_denoise: float,
        bg_source: str,
    ) -> list[Pixels]:
        """The demo's `process()`: `num_samples` uint8 RGB images."""
        initial = gradient(bg_source, image_width, image_height)
        rng = torch.Generator(device=self.device).manual_seed(int(seed))
        foreground = self.vae_encode([center_crop(input_fg, image_width, image_height)])
        conds, unconds = self.encode_pair(prompt + ", " + a_prompt, n_prompt)
        shared: dict[str, Any] = {
            "prompt_embeds": conds,
            "negative_prompt_embeds": unconds,
            "num_images_per_prompt": num_samples,
            "generator": rng,
            "output_type": "latent",
            "guidance_scale": cfg,
        }
        with warnings.catch_warnings():
            # A one-image initial latent for several samples is duplicated with a FutureWarning.
            warnings.simplefilter("ignore", FutureWarning)
            if initial is None:
                latents = self.text_to_image(
                    width=image_width,
                    height=image_height,
                    num_inference_steps=steps,
                    cross_attention_kwargs={"concat_conds": foreground},
                    **shared,
                ).images
            else:
                latents = self.image_to_image(
                    image=self.vae_encode([center_crop(initial, image_width, image_height)]),
                    strength=lowres_denoise,
                    num_inference_steps=round(steps / lowres_denoise),
                    cross_attention_kwargs={"concat_conds": foreground},
                    **shared,
                ).images
            latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            pixels = to_pixels(self.vae.decode(latents).sample)
            high_width = int(round(image_width * highres_scale / 64.0) * 64)
            high_height = int(round(image_height * highres_scale / 64.0) * 64)
            pixels = [resize(p, high_width, high_height) for p in pixels]
            latents = self.vae_encode(pixels).to(device=self.unet.device, dtype=self.unet.dtype)
            high_height, high_width = latents.shape[2] * 8, latents.shape[3] * 8
            foreground = self.vae_encode([center_crop(input_fg, high_width, high_height)])
            latents = self.image_to_image(
                image=latents,
                strength=highres_denoise,
                num_inference_steps=round(steps / highres_denoise),
                cross_attention_kwargs={"concat_conds": foreground},
                **shared,
            ).images
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return to_pixels(self.vae.decode(latents).sample)

    def process_relight(self, input_fg: Pixels, **arguments: Any) -> list[Pixels]:
        """The fc demo's button: matte the upload with RMBG, then `process()`."""
        assert self.rmbg is not None, "the model folder has no rmbg/"
        foreground, _ = run_rmbg(self.rmbg, input_fg)
        return self.process(foreground, **arguments)

    def process_relight_background(
        self, input_fg: Pixels, input_bg: Pixels | None, **arguments: Any
    ) -> list[Pixels]:
        """The fbc demo's button: matte the upload (not the background) with RMBG, then
        `process_background()`."""
        assert self.rmbg is not None, "the model folder has no rmbg/"
        foreground, _ = run_rmbg(self.rmbg, input_fg)
        return self.process_background(foreground, input_bg, **arguments)

    @torch.inference_mode()
    def process_background(
        self,
        input_fg: Pixels,
        input_bg: Pixels | None,
        *,
        prompt: str,
        image_width: int,
        image_height: int,
        num_samples: int,
        seed: int,
        steps: int,
        a_prompt: str,
        n_prompt: str,
        cfg: float,
        highres_scale: float,
        highres_denoise: float,
        bg_source: str,
    ) -> list[Pixels]:
        """`gradio_demo_bg.py`'s `process()` (fbc model): `num_samples` uint8 RGB images."""
        scene = background(bg_source, input_bg, image_width, image_height)
        rng = torch.Generator(device=self.device).manual_seed(seed)

        def conditions(width: int, height: int) -> torch.Tensor:
            both = self.vae_encode(
                [center_crop(input_fg, width, height), center_crop(scene, width, height)]
            )
            return torch.cat([latent[None] for latent in both], dim=1)

        conds, unconds = self.encode_pair(prompt + ", " + a_prompt, n_prompt)
        shared: dict[str, Any] = {
            "prompt_embeds": conds,
            "negative_prompt_embeds": unconds,
            "num_images_per_prompt": num_samples,
            "generator": rng,
            "output_type": "latent",
            "guidance_scale": cfg,
        }
        latents = self.text_to_image(
            width=image_width,
            height=image_height,
            num_inference_steps=steps,
            cross_attention_kwargs={"concat_conds": conditions(image_width, image_height)},
            **shared,
        ).images
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        pixels = to_pixels(self.vae.decode(latents).sample)
        high_width = int(round(image_width * highres_scale / 64.0) * 64)
        high_height = int(round(image_height * highres_scale / 64.0) * 64)
        pixels = [resize(p, high_width, high_height) for p in pixels]
        latents = self.vae_encode(pixels).to(device=self.unet.device, dtype=self.unet.dtype)
        high_height, high_width = latents.shape[2] * 8, latents.shape[3] * 8
        latents = self.image_to_image(
            image=latents,
            strength=highres_denoise,
            num_inference_steps=round(steps / highres_denoise),
            cross_attention_kwargs={"concat_conds": conditions(high_width, high_height)},
            **shared,
        ).images
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        decoded = self.vae.decode(latents).sample
        # This demo quantises through [0, 1]: x · 0.5 + 0.5, clipped, times 255, truncated.
        out = []
        for image in decoded:
            unit = (image.movedim(0, -1) * 0.5 + 0.5).detach().float().cpu().numpy()
            out.append((unit.clip(0, 1).astype(np.float32) * 255.0).clip(0, 255).astype(np.uint8))
        return out
