"""The IC-Light model folder: its layout, loading it, and the widened UNets with merged offsets.

Layout (an SD1.5 diffusers folder plus one or both IC-Light offset files)::

    MODEL_DIR/
      unet/config.json, unet/diffusion_pytorch_model.safetensors
      vae/config.json, vae/diffusion_pytorch_model.safetensors
      text_encoder/config.json, text_encoder/model.safetensors
      tokenizer/vocab.json, tokenizer/merges.txt, tokenizer/tokenizer_config.json
      iclight_sd15_fc.safetensors    (text-conditioned: relight by prompt and light direction)
      iclight_sd15_fbc.safetensors   (background-conditioned: relight to match a background)

For each offset file present, a copy of the UNet gets its `conv_in` widened (8 input channels
for fc: the foreground latent; 12 for fbc: foreground and background latents; the new channels
start at zero), then every weight gets its offset added, once, at load time. The text encoder,
VAE and tokenizer are shared by both.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import safetensors.torch
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from inference.model_folder import BASE_FILES


class Variant(StrEnum):
    """The two IC-Light models: conditioned on text (fc) or on a background too (fbc)."""

    FC = "fc"
    FBC = "fbc"

    @property
    def offsets_file(self) -> str:
        return f"iclight_sd15_{self.value}.safetensors"

    @property
    def in_channels(self) -> int:
        """The widened `conv_in`: the noisy latent plus the foreground (and background) latent."""
        return 8 if self is Variant.FC else 12


OFFSETS_FILE = Variant.FC.offsets_file
FBC_OFFSETS_FILE = Variant.FBC.offsets_file
# The fc model: the foreground latent rides next to the noisy latent, 4 + 4 channels.
CONCAT_CHANNELS = Variant.FC.in_channels


class ModelFolderError(RuntimeError):
    """The model folder is missing a file or holds weights that do not fit together."""


@dataclass(frozen=True, slots=True)
class ICLightModel:
    """The loaded networks, in fp32 on the CPU, with the offsets already merged into the UNets.

    `unets` holds one merged UNet per variant whose offsets the folder has.
    """

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unets: dict[Variant, UNet2DConditionModel]


def folder_variants(model_dir: Path) -> list[Variant]:
    """The variants whose offset file is in the folder (fc first)."""
    return [variant for variant in Variant if (model_dir / variant.offsets_file).is_file()]


def check_model_dir(model_dir: Path) -> list[Variant]:
    """The folder's variants; ModelFolderError naming the first missing file of the layout."""
    if not model_dir.is_dir():
        raise ModelFolderError(f"IC-Light model folder {model_dir} does not exist")
    expected = f"an SD1.5 diffusers folder plus {OFFSETS_FILE} and/or {FBC_OFFSETS_FILE}"
    for relative in BASE_FILES:
        if not (model_dir / relative).is_file():
            raise ModelFolderError(
                f"IC-Light model folder {model_dir} is missing {relative} (expected {expected})"
            )
    variants = folder_variants(model_dir)
    if not variants:
        raise ModelFolderError(
            f"IC-Light model folder {model_dir} is missing {OFFSETS_FILE} "
            f"(or {FBC_OFFSETS_FILE}): expected {expected}"
        )
    return variants


def widen_conv_in(unet: UNet2DConditionModel, channels: int = CONCAT_CHANNELS) -> None:
    """Give `conv_in` `channels` inputs: the first 4 keep their weights, the new ones start at 0."""
    old = unet.conv_in
    if old.in_channels == channels:
        return
    new = torch.nn.Conv2d(
        channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        dtype=old.weight.dtype,
        device=old.weight.device,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        assert new.bias is not None
        assert old.bias is not None
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=channels)


def merge_offsets(
    unet: UNet2DConditionModel, offsets: dict[str, torch.Tensor], offsets_file: str = OFFSETS_FILE
) -> None:
    """Add IC-Light's offset to every UNet weight (the UNet must already be widened)."""
    state = unet.state_dict()
    missing = sorted(set(state) - set(offsets))
    unexpected = sorted(set(offsets) - set(state))
    if missing or unexpected:
        raise ModelFolderError(
            f"{offsets_file} does not fit the UNet: {len(missing)} weights without an offset "
            f"(first: {missing[:1]}), {len(unexpected)} unknown offsets (first: {unexpected[:1]})"
        )
    merged: dict[str, torch.Tensor] = {}
    for key, base in state.items():
        offset = offsets[key]
        if offset.shape != base.shape:
            raise ModelFolderError(
                f"{offsets_file}: {key} has shape {tuple(offset.shape)}, "
                f"the UNet wants {tuple(base.shape)}"
            )
        merged[key] = (base.float() + offset.float()).to(base.dtype)
    unet.load_state_dict(merged, strict=True)


def load_model(model_dir: Path, variants: list[Variant] | None = None) -> ICLightModel:
    """Load the folder's networks (fp32, CPU) and merge each variant's offsets into a UNet.

    `variants` None loads every variant the folder has; asking for one it lacks is an error.
    """
    present = check_model_dir(model_dir)
    wanted = present if variants is None else variants
    for variant in wanted:
        if variant not in present:
            raise ModelFolderError(
                f"IC-Light model folder {model_dir} is missing {variant.offsets_file}"
            )
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(
        model_dir / "text_encoder", local_files_only=True, torch_dtype=torch.float32
    )
    # low_cpu_mem_usage needs the accelerate package, which the node does not install.
    vae = AutoencoderKL.from_pretrained(
        model_dir / "vae", local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False
    )
    base = UNet2DConditionModel.from_pretrained(
        model_dir / "unet",
        local_files_only=True,
        torch_dtype=torch.float32,
        low_cpu_mem_usage=False,
    )
    unets: dict[Variant, UNet2DConditionModel] = {}
    for index, variant in enumerate(wanted):
        # The last variant takes the loaded UNet itself; earlier ones a copy.
        unet = base if index == len(wanted) - 1 else copy.deepcopy(base)
        widen_conv_in(unet, variant.in_channels)
        offsets = safetensors.torch.load_file(str(model_dir / variant.offsets_file))
        merge_offsets(unet, offsets, variant.offsets_file)
        del offsets
        unets[variant] = unet.eval().requires_grad_(False)
    for module in (text_encoder, vae):
        module.eval().requires_grad_(False)
    return ICLightModel(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unets=unets)
