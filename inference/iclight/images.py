"""Pixels in and out of the IC-Light engine: gray compositing, matting, gradients, backgrounds.

Conversions follow the reference exactly: uint8 → tensor is `x / 127 - 1` (so gray 127 is
exactly 0), tensor → uint8 is `x · 127.5 + 127.5` in the decoder's dtype, clipped and truncated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.export.passes import move_to_device_pass

from relight.params import BackgroundSource, LightSource

BACKGROUND_GRAY = 127
# The matting model sees about this many 64×64 cells (the reference feeds RMBG ~1024²).
MATTING_CELLS = 256

UInt8Array = npt.NDArray[np.uint8]


class MattingModel:
    """An exported alpha matting program: 1×3×H×W RGB in [0, 1] → 1×1×h×w alpha in [0, 1].

    The file is a `torch.export.save` of an ExportedProgram whose H and W are dynamic (they
    are multiples of 64 near one megapixel, following the image's aspect ratio); the alpha is
    resized back (bilinear) to the image's size. Any background-removal network (e.g. BRIA
    RMBG) can be wrapped so, with its own input normalisation inside.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"matting model {path} does not exist")
        self.path = path
        self.device = device
        program = torch.export.load(str(path))
        if device.type != "cpu":
            program = move_to_device_pass(program, device)
        self._module = program.module()

    def alpha(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """Alpha in [0, 1] for every pixel of an RGB image, shape (H, W)."""
        width, height = image.size
        # The reference's arithmetic; at least one cell, where the reference would fail.
        k = (MATTING_CELLS / float(height * width)) ** 0.5
        feed_size = (max(64, 64 * round(width * k)), max(64, 64 * round(height * k)))
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


def composite_on_gray(subject: Image.Image, matting: MattingModel | None) -> Image.Image:
    """The subject over gray 127: by its own alpha, else the matting model's, else unchanged."""
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
