"""Write a tiny, randomly initialised IC-Light model folder with the real on-disk layout.

`python -m inference.tiny_model DIR` writes an SD1.5 diffusers folder (unet/, vae/,
text_encoder/, tokenizer/, model_index.json) plus `iclight_sd15_fc.safetensors`, with the same
file names, config keys and weight layout as the real model but a few thousand parameters per
block, so tests run the real loading and sampling code on a CPU in seconds.

It is built to be as *sensitive* as the real model, so that a test comparing two pipelines
catches a half-pixel or a one-level difference instead of averaging it away:

- the VAE has four blocks, so latents are 1/8 of the image size, and its latent projection is
  calibrated so that scaled latents (`mode() · scaling_factor`) have a standard deviation near
  1, as SD1.5's VAE gives them (the decoder's input projection is scaled back to match);
- the offsets' foreground channels of `conv_in` (the four that see the subject's latent) are
  strong, so the subject drives the output as it does in IC-Light;
- the tokenizer is a byte-level CLIP BPE with real merges, learned here from a small corpus of
  lighting prompts (no hub access), so words become one or a few tokens as in CLIP;
- the text encoder is stored under the `text_model.*` key names real checkpoints use;
- the offsets have the keys and shapes of the widened UNet (`conv_in` with 8 input channels
  for fc, 12 for fbc), as the real offsets have for the real UNet; `--fbc` writes the
  background-conditioned model's offsets instead, `--both` writes both;
- `--rmbg` adds `rmbg/model.safetensors`, a narrow BRIA RMBG-1.4 (the real module and key
  names, `conv_in` 8 channels wide instead of 64) whose batch norms are calibrated on a test
  image and whose matte is spread wide (logit std `TINY_RMBG_LOGIT_STD`), so its alpha varies
  strongly over a photo and a wrong feed size or input scaling moves it by many levels.
"""

from __future__ import annotations

import argparse
import collections
import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image, ImageDraw
from transformers import CLIPTextConfig, CLIPTextModel

from inference.iclight.rmbg import RMBG_DIR, RMBG_WEIGHTS, BriaRMBG
from inference.iclight.weights import Variant, widen_conv_in

LATENT_CHANNELS = 4
# What the VAE is calibrated to: SD1.5's scaled latents have a standard deviation near 1.
TARGET_LATENT_STD = 1.0
# The standard deviation of the offsets of conv_in's foreground channels in the tiny model.
TINY_FOREGROUND_OFFSET_STD = 0.5
BPE_MERGES = 400
# The tiny RMBG: `conv_in` width (the published model's is 64) and its matte's logit spread.
TINY_RMBG_WIDTH = 8
TINY_RMBG_LOGIT_STD = 3.0
# The text the tiny tokenizer's merges are learned from: IC-Light's quick prompts and defaults.
BPE_CORPUS = """
beautiful woman, detailed face. handsome man, detailed face. sunshine from window.
neon light, city. sunset over sea. golden time. sci-fi rgb glowing, cyberpunk.
natural lighting. warm atmosphere, at home, bedroom. magic lit. evil, gothic, yharnam.
light and shadow. shadow from window. soft studio lighting. home atmosphere, cozy bedroom
illumination. best quality. lowres, bad anatomy, bad hands, cropped, worst quality.
a cat, sunset. a portrait of a cat in the light of the morning sun, warm light from the left,
the cool light of the evening, a dog on the beach, product photo on a table, studio light.
"""

TOKENIZER_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (8, 16, 32),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 16, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
    # Attention over every latent pixel is the slowest part of a VAE on a CPU; the tiny one
    # keeps the block structure (and the ×8 scale) without it.
    "mid_block_add_attention": False,
}
TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": TOKENIZER_MAX_LENGTH,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-to-character table of byte-level BPE (GPT-2, CLIP): every byte is printable."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters), strict=True))


def learn_merges(corpus: str, count: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges learned from `corpus`, most frequent pair first (ties by name).

    Words are split as CLIP splits them (lower case, letters, digits, other runs), each ends
    with `</w>`, and the pair seen most often is merged, `count` times or until every word is
    one symbol.
    """
    table = _bytes_to_unicode()
    words = collections.Counter(
        tuple("".join(table[b] for b in word.encode("utf-8")))
        for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", corpus.lower())
    )
    symbols = {word: (*word[:-1], word[-1] + "</w>") for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, frequency in words.items():
            parts = symbols[word]
            for pair in itertools.pairwise(parts):
                pairs[pair] += frequency
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, parts in symbols.items():
            merged: list[str] = []
            index = 0
            while index < len(parts):
                if index + 1 < len(parts) and (parts[index], parts[index + 1]) == best:
                    merged.append(parts[index] + parts[index + 1])
                    index += 2
                else:
                    merged.append(parts[index])
                    index += 1
            symbols[word] = tuple(merged)
    return merges


def write_tokenizer(directory: Path) -> int:
    """Write a byte-level CLIP BPE tokenizer with merges learned here; its vocabulary size.

    The vocabulary is laid out as CLIP's: the 256 byte symbols, the same with `</w>`, one
    token per merge, then the start and end tokens.
    """
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    merges = learn_merges(BPE_CORPUS, BPE_MERGES)
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", "utf-8")
    specials = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": TOKENIZER_MAX_LENGTH,
        "do_lower_case": True,
        **specials,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), "utf-8")
    return len(vocab)


def _calibration_image(size: int = 256) -> torch.Tensor:
    """A fixed 1×3×size×size image in [-1, 1] with edges, gradients and texture."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rings = np.sin(40 * np.hypot(x - 0.4, y - 0.6))
    squares = np.where((x * 6).astype(int) % 2 == (y * 6).astype(int) % 2, 0.6, -0.6)
    noise = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32) * 0.3
    channels = np.stack([rings * 0.7 + noise, squares + noise, 2 * x - 1 + noise * 0.5])
    return torch.from_numpy(channels.clip(-1, 1).astype(np.float32))[None]


def calibrate_vae(vae: AutoencoderKL, target_std: float = TARGET_LATENT_STD) -> float:
    """Scale the VAE's latent projection so scaled latents have `target_std`; the factor.

    The mean half of `quant_conv` is multiplied by the factor and `post_quant_conv` divided
    by it, so the decoder sees what it saw before and only the latent scale changes.
    """
    with torch.no_grad():
        latent = vae.encode(_calibration_image()).latent_dist.mode()
        factor = target_std / float(latent.std() * vae.config.scaling_factor)
        vae.quant_conv.weight[:LATENT_CHANNELS] *= factor
        vae.quant_conv.bias[:LATENT_CHANNELS] *= factor
        vae.post_quant_conv.weight /= factor
    return factor


def _save_text_encoder(text_encoder: CLIPTextModel, directory: Path) -> None:
    """Save with the `text_model.*` key names of real SD1.5 checkpoints."""
    text_encoder.save_pretrained(directory, safe_serialization=True)
    weights = directory / "model.safetensors"
    state = safetensors.torch.load_file(str(weights))
    renamed = {
        key if key.startswith("text_model.") else f"text_model.{key}": value
        for key, value in state.items()
    }
    safetensors.torch.save_file(renamed, str(weights), metadata={"format": "pt"})


def write_model(
    directory: Path,
    *,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    text_config: dict[str, Any],
    seed: int = 0,
    offset_scale: float = 0.02,
    foreground_offset_scale: float | None = None,
    calibrate: bool = False,
    dtype: torch.dtype = torch.float32,
    variants: tuple[Variant, ...] = (Variant.FC,),
) -> Path:
    """Write a randomly initialised model folder of the documented layout; returns it.

    One offsets file per variant (fc: `conv_in` widened to 8 channels; fbc: to 12). The
    offsets are random too (normal, `offset_scale`), so the condition channels of `conv_in`,
    zero in the widened base, get weights from them as the real offsets give them;
    `foreground_offset_scale` gives those channels their own, stronger scale. `calibrate`
    scales the VAE's latents to SD1.5's spread (`calibrate_vae`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(directory / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        if calibrate:
            calibrate_vae(vae)
        text_encoder = _text_encoder(text_config, vocab_size)
        unet.to(dtype).save_pretrained(directory / "unet", safe_serialization=True)
        vae.to(dtype).save_pretrained(directory / "vae", safe_serialization=True)
        _save_text_encoder(text_encoder.to(dtype), directory / "text_encoder")
        for variant in variants:
            offsets = _random_offsets(unet, variant, offset_scale, foreground_offset_scale)
            safetensors.torch.save_file(offsets, str(directory / variant.offsets_file))
    (directory / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2), "utf-8")
    return directory


def _text_encoder(text_config: dict[str, Any], vocab_size: int) -> CLIPTextModel:
    """A random CLIP text encoder for the tokenizer's vocabulary (its last two: start, end)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=max(vocab_size, int(text_config.get("vocab_size", 0))),
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            **{k: v for k, v in text_config.items() if k != "vocab_size"},
        )
    )


def _random_offsets(
    unet: UNet2DConditionModel,
    variant: Variant,
    offset_scale: float,
    foreground_offset_scale: float | None,
) -> dict[str, torch.Tensor]:
    """Random fp16 offsets with the keys and shapes of `unet` widened for `variant`."""
    widened = copy.deepcopy(unet)
    widen_conv_in(widened, variant.in_channels)
    offsets = {
        key: (torch.randn(value.shape) * offset_scale).to(torch.float16).contiguous()
        for key, value in widened.state_dict().items()
    }
    if foreground_offset_scale is not None:
        condition = offsets["conv_in.weight"][:, LATENT_CHANNELS:]
        strong = torch.randn(condition.shape) * foreground_offset_scale
        offsets["conv_in.weight"][:, LATENT_CHANNELS:] = strong.to(torch.float16)
    return offsets


def _photo_like_image(size: int = 1024, seed: int = 0) -> torch.Tensor:
    """A fixed 1×3×size×size image scaled as RMBG's feed (`x / 127 − 1`), with a photo's
    statistics: smooth colour fields, a few flat-coloured shapes with sharp edges, mild noise.

    The size is the demo's feed size (~1024²): a random RMBG's activations depend on it (at
    256² its deepest stages see mostly padding), so it is calibrated where it runs.
    """
    rng = np.random.default_rng(seed)
    cells = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    picture = Image.fromarray(cells).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
        left, top = rng.uniform(0, size * 0.8, 2)
        width, height = rng.uniform(size * 0.1, size * 0.5, 2)
        colour = tuple(int(value) for value in rng.uniform(0, 255, 3))
        draw.ellipse((left, top, left + width, top + height), fill=colour)
    noise = rng.standard_normal((size, size, 3)).astype(np.float32) * 3.0
    pixels = (np.asarray(picture, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8)
    return (torch.from_numpy(pixels).float() / 127.0 - 1.0).movedim(-1, 0)[None]


def calibrate_rmbg(network: BriaRMBG, image: torch.Tensor, logit_std: float) -> None:
    """Give a random RMBG the activations of a trained one on `image` (N×3×H×W in [-1, 1]).

    Every batch norm's running statistics become those of `image`'s activations (one pass in
    training mode with a cumulative average), so no layer's signal vanishes or explodes; then
    `side1` is scaled and shifted so the matte's logit has mean 0 and std `logit_std` there.
    """
    norms = [module for module in network.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        network.train()
        network(image)
        network.eval()
        for norm in norms:
            norm.momentum = 0.1
        # Not more than sigmoid's fp32 range: the logit of a saturated matte would be infinite.
        logit = torch.logit(network(image)[0][0], eps=1e-6)
        factor = logit_std / float(logit.std())
        bias = network.side1.bias
        assert bias is not None
        network.side1.weight *= factor
        bias.copy_((bias - float(logit.mean())) * factor)


def write_tiny_rmbg(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny calibrated RMBG (see the module docstring) as `directory/model.safetensors`."""
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = BriaRMBG(width=TINY_RMBG_WIDTH)
    calibrate_rmbg(network, _photo_like_image(), TINY_RMBG_LOGIT_STD)
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    safetensors.torch.save_file(state, str(directory / RMBG_WEIGHTS), metadata={"format": "pt"})
    config = {"in_ch": 3, "out_ch": 1}
    (directory / "config.json").write_text(json.dumps(config, indent=2), "utf-8")
    return directory


def write_tiny_model(
    directory: Path,
    *,
    seed: int = 0,
    variants: tuple[Variant, ...] = (Variant.FC,),
    rmbg: bool = False,
) -> Path:
    """Write the tiny test model (see the module docstring) into `directory`.

    `variants`: which IC-Light offsets it has, fc (the default), fbc, or both; `rmbg`: add
    the tiny RMBG matting network (`rmbg/`).
    """
    if rmbg:
        write_tiny_rmbg(directory / RMBG_DIR, seed=seed)
    return write_model(
        directory,
        unet_config=TINY_UNET_CONFIG,
        vae_config=TINY_VAE_CONFIG,
        text_config=TINY_TEXT_CONFIG,
        seed=seed,
        # Larger than real offsets, so the foreground visibly steers the tiny random UNet.
        offset_scale=0.2,
        foreground_offset_scale=TINY_FOREGROUND_OFFSET_STD,
        calibrate=True,
        variants=variants,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the model folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--fbc", action="store_true", help="the background-conditioned model only")
    kind.add_argument("--both", action="store_true", help="both the fc and the fbc offsets")
    parser.add_argument(
        "--rmbg", action="store_true", help="add a tiny BRIA RMBG-1.4 matting network (rmbg/)"
    )
    args = parser.parse_args()
    variants: tuple[Variant, ...] = (Variant.FC,)
    if args.fbc:
        variants = (Variant.FBC,)
    elif args.both:
        variants = (Variant.FC, Variant.FBC)
    path = write_tiny_model(args.directory, seed=args.seed, variants=variants, rmbg=args.rmbg)
    print(f"wrote a tiny IC-Light model folder to {path}")  # noqa: T201


if __name__ == "__main__":
    main()
