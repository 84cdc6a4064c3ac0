"""Pixels in and out of the IC-Light engine: gray compositing, matting, gradients, backgrounds.

Conversions follow the reference exactly: uint8 → tensor is `x / 127 - 1` (so gray 127 is
exactly 0), tensor → uint8 is `x · 127.5 + 127.5` in the decoder's dtype, clipped and truncated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.export.passes import move_to_device_pass

from inference.iclight.rmbg import RMBG_DIR, load_rmbg
from relight.core.params import BackgroundSource, LightSource

BACKGROUND_GRAY = 127
# The matting model sees about this many 64×64 cells (the reference feeds RMBG ~1024²).
MATTING_CELLS = 256

UInt8Array = npt.NDArray[np.uint8]


class Matting(Protocol):
    """What cuts a subject without alpha out: a name (for /healthz) and an alpha per pixel."""

    @property
    def name(self) -> str: ...

    def alpha(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """Alpha in [0, 1] for every pixel of an RGB image, shape (H, W)."""
        ...


def rmbg_feed_size(width: int, height: int) -> tuple[int, int]:
    """The size the demo resizes a W×H subject to for RMBG: about `MATTING_CELLS` 64×64 cells
    (~1024²) in the subject's aspect ratio, each side a multiple of 64.

    `k = (256 / (H·W))^0.5`, side `64 · round(side · k)` (Python's round: halves to even), as
    the demo computes it; at least 64, where the demo's resize would fail on a zero side.
    """
    k = (MATTING_CELLS / float(height * width)) ** 0.5
    return max(64, 64 * round(width * k)), max(64, 64 * round(height * k))


class RMBGMatting:
    """BRIA RMBG-1.4 (`inference.iclight.rmbg`) with the demo's `run_rmbg` arithmetic.

    The subject is resized (LANCZOS) to `rmbg_feed_size`, scaled as the demo scales every
    image for its networks (`x / 127 − 1`, 127 ↦ 0, not RMBG's own `x / 255 − 0.5`), the
    network's first matte is resized back to H×W (bilinear) and clipped to [0, 1]. The network
    runs in fp32 on any device, as the demo runs it.
    """

    name = "rmbg-1.4"

    def __init__(self, directory: Path, device: torch.device) -> None:
        self.directory = directory
        self.device = device
        self._network = load_rmbg(directory).to(device=device, dtype=torch.float32)

    @classmethod
    def from_model_dir(cls, model_dir: Path, device: torch.device) -> RMBGMatting:
        """The network of the IC-Light model folder's `rmbg/` subfolder."""
        return cls(model_dir / RMBG_DIR, device)

    def alpha(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """Alpha in [0, 1] for every pixel of an RGB image, shape (H, W)."""
        width, height = image.size
        feed = np.asarray(image.resize(rmbg_feed_size(width, height), Image.Resampling.LANCZOS))
        with torch.inference_mode():
            tensor = to_tensor([feed]).to(device=self.device, dtype=torch.float32)
            matte = self._network(tensor)[0][0]
            matte = torch.nn.functional.interpolate(matte, size=(height, width), mode="bilinear")
            result: npt.NDArray[np.float32] = matte[0, 0].float().cpu().numpy().clip(0, 1)
        return result


class MattingModel:
    """An exported alpha matting program: 1×3×H×W RGB in [0, 1] → 1×1×h×w alpha in [0, 1].

    The file is a `torch.export.save` of an ExportedProgram whose H and W are dynamic (they
    are multiples of 64 near one megapixel, following the image's aspect ratio); the alpha is
    resized back (bilinear) to the image's size. Any background-removal network (e.g.
    BiRefNet, for an operator who needs a commercial licence: RMBG-1.4's weights are
    non-commercial) can be wrapped so, with its own input normalisation inside.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"matting model {path} does not exist")
        self.path = path
        self.device = device
        self.name = f"exported:{path.name}"
        program = torch.export.load(str(path))
        if device.type != "cpu":
            program = move_to_device_pass(program, device)
        self._module = program.module()

    def alpha(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """Alpha in [0, 1] for every pixel of an RGB image, shape (H, W)."""
        width, height = image.size
        feed_size = rmbg_feed_size(width, height)
        feed = np.asarray(image.resize(feed_size, Image.Resampling.LANCZOS), dtype=np.float32)
        tensor = torch.from_numpy(feed / 255.0).permute(2, 0, 1)[None].to(self.device)
        with torch.inference_mode():
            out = self._module(tensor)
            if isinstance(out, list | tuple):
                out = out[0]
            alpha = torch.nn.functional.interpolate(
                out.float().reshape(1, 1, *out.shape[-2:]), size=(height, width), mode="bilinear"
            )
        result: npt.NDArray[np.float32] = alpha[0, 0].clamp(0, 1).cpu().numpy()
        return result


def composite_on_gray(subject: Image.Image, matting: Matting | None) -> Image.Image:
    """The subject over gray 127: by its own alpha, else the matting model's, else unchanged.

    `127 + (rgb − 127) · alpha` in float32, clipped and truncated: the demo's `run_rmbg` step.
    """
    if subject.mode not in ("RGB", "RGBA"):
        has_alpha = subject.mode in ("LA", "PA", "La") or "transparency" in subject.info
        subject = subject.convert("RGBA" if has_alpha else "RGB")
    rgb = subject.convert("RGB")
    if subject.mode == "RGBA":
        alpha = np.asarray(subject.getchannel("A"), dtype=np.float32) / 255.0
    elif matting is not None:
        alpha = matting.alpha(rgb)
    else:
        return rgb
    pixels = np.asarray(rgb, dtype=np.float32)
    mixed = BACKGROUND_GRAY + (pixels - BACKGROUND_GRAY) * alpha[..., None]
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8), "RGB")


def light_gradient(source: LightSource, width: int, height: int) -> UInt8Array | None:
    """The initial image for a light direction (bright on the light's side); None for "None"."""
    if source is LightSource.NONE:
        return None
    # Each direction has its own ramp, as the reference writes it: linspace(255, 0, n) is not
    # always the mirror of linspace(0, 255, n) once truncated to uint8 (n = 896, for one).
    bright_first = source in (LightSource.LEFT, LightSource.TOP)
    if source in (LightSource.LEFT, LightSource.RIGHT):
        ramp = np.linspace(255, 0, width) if bright_first else np.linspace(0, 255, width)
        plane = np.tile(ramp, (height, 1))
    else:
        column = np.linspace(255, 0, height) if bright_first else np.linspace(0, 255, height)
        plane = np.tile(column[:, None], (1, width))
    return np.stack((plane,) * 3, axis=-1).astype(np.uint8)


def background_for(
    source: BackgroundSource, background: Image.Image | None, width: int, height: int
) -> UInt8Array:
    """The fbc model's background image, before cropping, as the reference builds it.

    The uploaded background (RGB; mirrored for the flipped source), a width×height gray
    gradient from 224 on the light's side to 32, or flat gray 64 ("Ambient").
    """
    if source.needs_image:
        if background is None:
            raise ValueError(f"background_source {source.value!r} needs a background_image")
        pixels = np.asarray(background.convert("RGB"))
        return np.fliplr(pixels) if source is BackgroundSource.UPLOAD_FLIP else pixels
    if source is BackgroundSource.AMBIENT:
        return np.zeros((height, width, 3), dtype=np.uint8) + 64
    bright_first = source in (BackgroundSource.LEFT, BackgroundSource.TOP)
    if source in (BackgroundSource.LEFT, BackgroundSource.RIGHT):
        ramp = np.linspace(224, 32, width) if bright_first else np.linspace(32, 224, width)
        plane = np.tile(ramp, (height, 1))
    else:
        column = np.linspace(224, 32, height) if bright_first else np.linspace(32, 224, height)
        plane = np.tile(column[:, None], (1, width))
    return np.stack((plane,) * 3, axis=-1).astype(np.uint8)


def to_tensor(images: list[UInt8Array]) -> torch.Tensor:
    """uint8 H×W×3 images → N×3×H×W float32 with 127 ↦ 0."""
    stacked = torch.from_numpy(np.stack(images, axis=0)).float() / 127.0 - 1.0
    return stacked.movedim(-1, 1)


def to_uint8(pixels: torch.Tensor) -> list[UInt8Array]:
    """N×3×H×W decoder output → uint8 H×W×3 images, quantised as the reference does.

    The scaling happens in the decoder's dtype (bf16 on CUDA, as in the demo), then the values
    are clipped and truncated.
    """
    scaled = (pixels.movedim(1, -1) * 127.5 + 127.5).float().cpu().numpy()
    return [image.clip(0, 255).astype(np.uint8) for image in scaled]


def to_uint8_via_unit(pixels: torch.Tensor) -> list[UInt8Array]:
    """Decoder output → uint8 as the fbc demo quantises its results.

    `x · 0.5 + 0.5` in the decoder's dtype, clipped to [0, 1] in fp32, times 255, clipped and
    truncated: a different rounding path from `to_uint8`, kept for identical pixels.
    """
    unit = (pixels.movedim(1, -1) * 0.5 + 0.5).float().cpu().numpy().clip(0, 1)
    return [(image * 255.0).clip(0, 255).astype(np.uint8) for image in unit]
