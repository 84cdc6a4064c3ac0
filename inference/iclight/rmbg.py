"""BRIA RMBG-1.4, the background-removal network IC-Light's demos cut the subject out with.

The architecture is the U²-Net-like `BriaRMBG` of the reference's `briarmbg.py`: a strided
input convolution, six encoder stages of residual U-blocks (RSU-7, -6, -5, -4 and two dilated
RSU-4F), five decoder stages, and one 3×3 side convolution per decoder depth whose sigmoids,
upsampled to the input size, are the outputs (the first, `side1`'s, is the matte). Module and
parameter names are the reference's, so the published `briaai/RMBG-1.4` `model.safetensors`
loads with `load_state_dict(strict=True)`: `conv_in.weight`,
`stage1.rebnconvin.conv_s1.weight`, `stage1.rebnconvin.bn_s1.running_mean`, …, `side6.bias`.

`width` is the channel count of `conv_in` (64 in the published model); every other width scales
with it, so a narrower network (the tiny test model's) has the same structure and key names.
The weights decide the width when a folder is loaded (`load_rmbg`).

Layout of the folder (IC-Light model folder, `rmbg/`)::

    MODEL_DIR/rmbg/model.safetensors   (briaai/RMBG-1.4's file, unchanged)
    MODEL_DIR/rmbg/config.json         (optional; its `in_ch` and `out_ch` are checked)
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

RMBG_DIR = "rmbg"
RMBG_WEIGHTS = "model.safetensors"
RMBG_CONFIG = "config.json"
# The published model's `conv_in` width.
RMBG_WIDTH = 64


class REBNCONV(nn.Module):
    """3×3 convolution (dilated by `dirate`), batch norm, ReLU: the network's building block."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.relu_s1(self.bn_s1(self.conv_s1(x)))
        return result


def _upsample_like(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`source` resized (bilinear, half-pixel centres) to `target`'s height and width."""
    return F.interpolate(source, size=target.shape[2:], mode="bilinear")


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, stride=2, ceil_mode=True)


class RSU(nn.Module):
    """Residual U-block of `depth` levels (RSU-4 … RSU-7): a small U-Net over `rebnconvin`'s
    output, added back to it.

    Encoder `rebnconv1` … `rebnconv{depth-1}` with a 2× max-pool (`pool1` …) after each but
    the last, a dilation-2 `rebnconv{depth}` at the bottom, then decoder `rebnconv{depth-1}d`
    … `rebnconv1d`, each fed its skip and the upsampled level below.
    """

    def __init__(self, depth: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.depth = depth
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        # Plain lists (not registered twice): the modules are registered by their names above.
        self.encoders: list[REBNCONV] = []
        self.pools: list[nn.MaxPool2d] = []
        for level in range(1, depth):
            block = REBNCONV(out_ch if level == 1 else mid_ch, mid_ch)
            self.add_module(f"rebnconv{level}", block)
            self.encoders.append(block)
            if level < depth - 1:
                pool = _pool()
                self.add_module(f"pool{level}", pool)
                self.pools.append(pool)
        bottom = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.add_module(f"rebnconv{depth}", bottom)
        self.decoders: list[REBNCONV] = []
        for level in range(depth - 1, 0, -1):
            block = REBNCONV(mid_ch * 2, out_ch if level == 1 else mid_ch)
            self.add_module(f"rebnconv{level}d", block)
            self.decoders.append(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        entry: torch.Tensor = self.rebnconvin(x)
        skips: list[torch.Tensor] = []
        hidden = entry
        for level, block in enumerate(self.encoders):
            hidden = block(hidden)
            skips.append(hidden)
            if level < len(self.pools):
                hidden = self.pools[level](hidden)
        hidden = self.get_submodule(f"rebnconv{self.depth}")(hidden)
        for level, block in enumerate(self.decoders):
            skip = skips[-1 - level]
            hidden = block(torch.cat((hidden, skip), 1))
            if level < len(self.decoders) - 1:
                hidden = _upsample_like(hidden, skips[-2 - level])
        return hidden + entry


class RSU4F(nn.Module):
    """The flat residual U-block: dilations 1, 2, 4, 8 down and 4, 2, 1 up, no pooling."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        entry: torch.Tensor = self.rebnconvin(x)
        first = self.rebnconv1(entry)
        second = self.rebnconv2(first)
        third = self.rebnconv3(second)
        bottom = self.rebnconv4(third)
        up: torch.Tensor = self.rebnconv3d(torch.cat((bottom, third), 1))
        up = self.rebnconv2d(torch.cat((up, second), 1))
        up = self.rebnconv1d(torch.cat((up, first), 1))
        return up + entry


class BriaRMBG(nn.Module):
    """The RMBG-1.4 network: 1×C×H×W image → (six 1×1×H×W sigmoid mattes, decoder features).

    The first matte (`side1`, the finest) is the one used; the others are the deeper side
    outputs, kept so the call returns what the reference's does.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1, width: int = RMBG_WIDTH) -> None:
        super().__init__()
        if width % 4:
            raise ValueError(f"RMBG width {width} is not a multiple of 4")
        q = width // 4  # the narrowest block's width (16 in the published model)
        self.conv_in = nn.Conv2d(in_ch, 4 * q, 3, stride=2, padding=1)
        self.stage1 = RSU(7, 4 * q, 2 * q, 4 * q)
        self.pool12 = _pool()
        self.stage2 = RSU(6, 4 * q, 2 * q, 8 * q)
        self.pool23 = _pool()
        self.stage3 = RSU(5, 8 * q, 4 * q, 16 * q)
        self.pool34 = _pool()
        self.stage4 = RSU(4, 16 * q, 8 * q, 32 * q)
        self.pool45 = _pool()
        self.stage5 = RSU4F(32 * q, 16 * q, 32 * q)
        self.pool56 = _pool()
        self.stage6 = RSU4F(32 * q, 16 * q, 32 * q)
        self.stage5d = RSU4F(64 * q, 16 * q, 32 * q)
        self.stage4d = RSU(4, 64 * q, 8 * q, 16 * q)
        self.stage3d = RSU(5, 32 * q, 4 * q, 8 * q)
        self.stage2d = RSU(6, 16 * q, 2 * q, 4 * q)
        self.stage1d = RSU(7, 8 * q, q, 4 * q)
        # One side output per decoder depth, finest first.
        self.side1 = nn.Conv2d(4 * q, out_ch, 3, padding=1)
        self.side2 = nn.Conv2d(4 * q, out_ch, 3, padding=1)
        self.side3 = nn.Conv2d(8 * q, out_ch, 3, padding=1)
        self.side4 = nn.Conv2d(16 * q, out_ch, 3, padding=1)
        self.side5 = nn.Conv2d(32 * q, out_ch, 3, padding=1)
        self.side6 = nn.Conv2d(32 * q, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        hx1 = self.stage1(self.conv_in(x))
        hx2 = self.stage2(self.pool12(hx1))
        hx3 = self.stage3(self.pool23(hx2))
        hx4 = self.stage4(self.pool34(hx3))
        hx5 = self.stage5(self.pool45(hx4))
        hx6 = self.stage6(self.pool56(hx5))

        hx5d = self.stage5d(torch.cat((_upsample_like(hx6, hx5), hx5), 1))
        hx4d = self.stage4d(torch.cat((_upsample_like(hx5d, hx4), hx4), 1))
        hx3d = self.stage3d(torch.cat((_upsample_like(hx4d, hx3), hx3), 1))
        hx2d = self.stage2d(torch.cat((_upsample_like(hx3d, hx2), hx2), 1))
        hx1d = self.stage1d(torch.cat((_upsample_like(hx2d, hx1), hx1), 1))

        features = [hx1d, hx2d, hx3d, hx4d, hx5d, hx6]
        sides = (self.side1, self.side2, self.side3, self.side4, self.side5, self.side6)
        mattes = [
            torch.sigmoid(_upsample_like(side(feature), x))
            for side, feature in zip(sides, features, strict=True)
        ]
        return mattes, features


def load_rmbg(directory: Path) -> BriaRMBG:
    """The network in `directory` (`model.safetensors`, optional `config.json`), fp32, eval.

    The widths come from the weights (`conv_in`'s shape), so the published file and a narrow
    test network load alike; every key must match (`strict=True`). A file without the batch
    norms' `num_batches_tracked` counters loads too (torch fills them in).
    """
    weights = directory / RMBG_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"RMBG weights {weights} do not exist")
    state = safetensors.torch.load_file(str(weights))
    if "conv_in.weight" not in state or "side1.weight" not in state:
        raise ValueError(f"{weights} is not a BRIA RMBG-1.4 state dict (no conv_in/side1)")
    width, in_ch = state["conv_in.weight"].shape[:2]
    out_ch = state["side1.weight"].shape[0]
    config_file = directory / RMBG_CONFIG
    if config_file.is_file():
        config = json.loads(config_file.read_text("utf-8"))
        declared = (config.get("in_ch", in_ch), config.get("out_ch", out_ch))
        if declared != (in_ch, out_ch):
            weighted = (in_ch, out_ch)
            raise ValueError(f"{config_file} declares in/out {declared}, the weights {weighted}")
    network = BriaRMBG(in_ch=in_ch, out_ch=out_ch, width=width)
    network.load_state_dict(state, strict=True)
    return network.eval()


def has_rmbg(model_dir: Path) -> bool:
    """Whether the model folder has RMBG weights (`rmbg/model.safetensors`)."""
    return (model_dir / RMBG_DIR / RMBG_WEIGHTS).is_file()
