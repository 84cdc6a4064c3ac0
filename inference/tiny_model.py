"""Write a tiny, randomly initialised IC-Light model folder with the real on-disk layout.

`python -m inference.tiny_model DIR` writes an SD1.5 diffusers folder (unet/, vae/,
text_encoder/, tokenizer/, model_index.json) plus `iclight_sd15_fc.safetensors`, with the same
file names, config keys and weight layout as the real model but a few thousand parameters per
block, so tests run the real loading and sampling code on a CPU in seconds. The VAE has four
blocks, so latents are 1/8 of the image size as in SD1.5; the tokenizer is a byte-level CLIP BPE
written here (no hub access); the offsets have the keys and shapes of the widened UNet
(`conv_in` with 8 input channels), as the real fc offsets have for the real UNet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from inference.iclight.weights import CONCAT_CHANNELS, OFFSETS_FILE, widen_conv_in

TOKENIZER_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

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


def write_tokenizer(directory: Path) -> int:
    """Write a byte-level CLIP tokenizer (every byte a token, no merges); its vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", "utf-8")
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


def write_model(
    directory: Path,
    *,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    text_config: dict[str, Any],
    seed: int = 0,
    offset_scale: float = 0.02,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a randomly initialised model folder of the documented layout; returns it.

    The offsets are random too (normal, `offset_scale`), so the foreground channels of
    `conv_in`, zero in the widened base, get weights from them as the real offsets give them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(directory / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=max(vocab_size, int(text_config.get("vocab_size", 0))),
                bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1,
                pad_token_id=vocab_size - 1,
                **{k: v for k, v in text_config.items() if k != "vocab_size"},
            )
        )
        unet.to(dtype).save_pretrained(directory / "unet", safe_serialization=True)
        vae.to(dtype).save_pretrained(directory / "vae", safe_serialization=True)
        text_encoder.to(dtype).save_pretrained(directory / "text_encoder", safe_serialization=True)

        widen_conv_in(unet)
        assert unet.conv_in.in_channels == CONCAT_CHANNELS
        offsets = {
            key: (torch.randn(value.shape) * offset_scale).to(torch.float16).contiguous()
            for key, value in unet.state_dict().items()
        }
    safetensors.torch.save_file(offsets, str(directory / OFFSETS_FILE))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (directory / "model_index.json").write_text(json.dumps(index, indent=2), "utf-8")
    return directory


def write_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """Write the tiny test model (see the module docstring) into `directory`."""
    return write_model(
        directory,
        unet_config=TINY_UNET_CONFIG,
        vae_config=TINY_VAE_CONFIG,
        text_config=TINY_TEXT_CONFIG,
        seed=seed,
        # Larger than real offsets, so the foreground visibly steers the tiny random UNet.
        offset_scale=0.2,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the model folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    path = write_tiny_model(args.directory, seed=args.seed)
    print(f"wrote a tiny IC-Light model folder to {path}")  # noqa: T201


if __name__ == "__main__":
    main()
