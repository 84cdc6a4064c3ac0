"""The state-dict keys and shapes of briaai/RMBG-1.4's `model.safetensors`, derived by hand.

Written from the reference's `briarmbg.py` constructors alone (no Relight module): each
`REBNCONV(in, out)` holds `conv_s1` (3×3 conv with bias) and `bn_s1` (weight, bias,
running_mean, running_var, num_batches_tracked); an RSU-L block holds `rebnconvin` (in → out),
`rebnconv1` (out → mid), `rebnconv2` … `rebnconvL` (mid → mid), `rebnconv{L-1}d` …
`rebnconv2d` (2·mid → mid) and `rebnconv1d` (2·mid → out); RSU-4F has RSU-4's names. The
network is `conv_in` (3 → 64, stride 2), the stages below and `side1` … `side6` (3×3 → 1).
`python -m tests.inference.rmbg_keys` writes `data/rmbg14_state_dict.txt`.
"""

from __future__ import annotations

from pathlib import Path

KEYS_FILE = Path(__file__).with_name("data") / "rmbg14_state_dict.txt"

# (attribute, levels L of the RSU-L block, in_ch, mid_ch, out_ch), as BriaRMBG.__init__ lists them.
STAGES: list[tuple[str, int, int, int, int]] = [
    ("stage1", 7, 64, 32, 64),
    ("stage2", 6, 64, 32, 128),
    ("stage3", 5, 128, 64, 256),
    ("stage4", 4, 256, 128, 512),
    ("stage5", 4, 512, 256, 512),  # RSU4F
    ("stage6", 4, 512, 256, 512),  # RSU4F
    ("stage5d", 4, 1024, 256, 512),  # RSU4F
    ("stage4d", 4, 1024, 128, 256),
    ("stage3d", 5, 512, 64, 128),
    ("stage2d", 6, 256, 32, 64),
    ("stage1d", 7, 128, 16, 64),
]
SIDES = [64, 64, 128, 256, 512, 512]

Shape = tuple[int, ...]


def _rebnconv(prefix: str, in_ch: int, out_ch: int) -> list[tuple[str, Shape]]:
    return [
        (f"{prefix}.conv_s1.weight", (out_ch, in_ch, 3, 3)),
        (f"{prefix}.conv_s1.bias", (out_ch,)),
        (f"{prefix}.bn_s1.weight", (out_ch,)),
        (f"{prefix}.bn_s1.bias", (out_ch,)),
        (f"{prefix}.bn_s1.running_mean", (out_ch,)),
        (f"{prefix}.bn_s1.running_var", (out_ch,)),
        (f"{prefix}.bn_s1.num_batches_tracked", ()),
    ]


def _rsu(prefix: str, levels: int, in_ch: int, mid_ch: int, out_ch: int) -> list[tuple[str, Shape]]:
    keys = _rebnconv(f"{prefix}.rebnconvin", in_ch, out_ch)
    keys += _rebnconv(f"{prefix}.rebnconv1", out_ch, mid_ch)
    for level in range(2, levels + 1):
        keys += _rebnconv(f"{prefix}.rebnconv{level}", mid_ch, mid_ch)
    for level in range(levels - 1, 1, -1):
        keys += _rebnconv(f"{prefix}.rebnconv{level}d", 2 * mid_ch, mid_ch)
    keys += _rebnconv(f"{prefix}.rebnconv1d", 2 * mid_ch, out_ch)
    return keys


def rmbg14_state_dict_shapes() -> list[tuple[str, Shape]]:
    """Every (key, shape) of the published state dict, in the modules' registration order."""
    keys: list[tuple[str, Shape]] = [("conv_in.weight", (64, 3, 3, 3)), ("conv_in.bias", (64,))]
    for stage in STAGES:
        keys += _rsu(*stage)
    for index, channels in enumerate(SIDES, 1):
        keys += [(f"side{index}.weight", (1, channels, 3, 3)), (f"side{index}.bias", (1,))]
    return keys


def read_keys_file(path: Path = KEYS_FILE) -> list[tuple[str, Shape]]:
    """The fixture's lines `key<TAB>d0,d1,…` (an empty shape for a scalar)."""
    rows = []
    for line in path.read_text("utf-8").splitlines():
        key, dims = line.split("\t")
        rows.append((key, tuple(int(d) for d in dims.split(",") if d)))
    return rows


if __name__ == "__main__":
    lines = [f"{key}\t{','.join(map(str, shape))}" for key, shape in rmbg14_state_dict_shapes()]
    KEYS_FILE.write_text("\n".join(lines) + "\n", "utf-8")
