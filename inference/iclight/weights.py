"""The IC-Light model folder: its layout, loading it, and the 8-channel UNet with merged offsets.

Layout (an SD1.5 diffusers folder plus the IC-Light offsets)::

    MODEL_DIR/
      unet/config.json, unet/diffusion_pytorch_model.safetensors
      vae/config.json, vae/diffusion_pytorch_model.safetensors
      text_encoder/config.json, text_encoder/model.safetensors
      tokenizer/vocab.json, tokenizer/merges.txt, tokenizer/tokenizer_config.json
      iclight_sd15_fc.safetensors

The UNet's `conv_in` is widened to 8 input channels (the extra four, which see the foreground
latent, start at zero), then every weight gets its offset added, once, at load time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

OFFSETS_FILE = "iclight_sd15_fc.safetensors"
REQUIRED_FILES: tuple[str, ...] = (
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    OFFSETS_FILE,
)
# The foreground latent rides next to the noisy latent: 4 + 4 channels into the UNet.
CONCAT_CHANNELS = 8


class ModelFolderError(RuntimeError):
    """The model folder is missing a file or holds weights that do not fit together."""


@dataclass(frozen=True, slots=True)
class ICLightModel:
    """The loaded networks, in fp32 on the CPU, with the offsets already merged into the UNet."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel


def check_model_dir(model_dir: Path) -> None:
    """Raise ModelFolderError naming the first missing file of the documented layout."""
    if not model_dir.is_dir():
        raise ModelFolderError(f"IC-Light model folder {model_dir} does not exist")
    for relative in REQUIRED_FILES:
        if not (model_dir / relative).is_file():
            raise ModelFolderError(
                f"IC-Light model folder {model_dir} is missing {relative} "
                f"(expected an SD1.5 diffusers folder plus {OFFSETS_FILE})"
            )


def widen_conv_in(unet: UNet2DConditionModel) -> None:
    """Give `conv_in` 8 input channels: the first 4 keep their weights, the new 4 start at zero."""
    old = unet.conv_in
    if old.in_channels == CONCAT_CHANNELS:
        return
    new = torch.nn.Conv2d(
        CONCAT_CHANNELS,
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
    unet.register_to_config(in_channels=CONCAT_CHANNELS)


def merge_offsets(unet: UNet2DConditionModel, offsets: dict[str, torch.Tensor]) -> None:
    """Add IC-Light's offset to every UNet weight (the UNet must already be widened)."""
    state = unet.state_dict()
    missing = sorted(set(state) - set(offsets))
    unexpected = sorted(set(offsets) - set(state))
    if missing or unexpected:
        raise ModelFolderError(
            f"{OFFSETS_FILE} does not fit the UNet: {len(missing)} weights without an offset "
            f"(first: {missing[:1]}), {len(unexpected)} unknown offsets (first: {unexpected[:1]})"
        )
    merged: dict[str, torch.Tensor] = {}
    for key, base in state.items():
        offset = offsets[key]
        if offset.shape != base.shape:
            raise ModelFolderError(
                f"{OFFSETS_FILE}: {key} has shape {tuple(offset.shape)}, "
                f"the UNet wants {tuple(base.shape)}"
            )
        merged[key] = (base.float() + offset.float()).to(base.dtype)
    unet.load_state_dict(merged, strict=True)


def load_model(model_dir: Path) -> ICLightModel:
    """Load every network of the folder (fp32, CPU) and merge the offsets into the UNet."""
    check_model_dir(model_dir)
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(
        model_dir / "text_encoder", local_files_only=True, torch_dtype=torch.float32
    )
    # low_cpu_mem_usage needs the accelerate package, which the node does not install.
    vae = AutoencoderKL.from_pretrained(
        model_dir / "vae", local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False
    )
    unet = UNet2DConditionModel.from_pretrained(
        model_dir / "unet",
        local_files_only=True,
        torch_dtype=torch.float32,
        low_cpu_mem_usage=False,
    )
    widen_conv_in(unet)
    offsets = safetensors.torch.load_file(str(model_dir / OFFSETS_FILE))
    merge_offsets(unet, offsets)
    del offsets
    for module in (text_encoder, vae, unet):
        module.eval().requires_grad_(False)
    return ICLightModel(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet)
