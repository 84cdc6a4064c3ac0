"""The classic engine: a deterministic image-processing relight, with no neural network.

This is an approximation, meant for when neither a GPU node nor Segmind is available. It does
not generate anything: the subject's own pixels are kept as the albedo and multiplied by a
smooth light field. The field is built at a quarter of the output resolution from

- a directional key light that follows `params.light_source` (a linear ramp across the frame,
  as IC-Light's gradient initial latent, times Lambert shading with wrap-around),
- pseudo-3D normals estimated from the blurred alpha mask (the silhouette bulges towards the
  viewer) and the blurred luminance (bright reads as raised), so the light wraps around shapes,
- a softer fill light from the opposite side,
- a light colour and strength read from lighting words in the prompt (`_KEYWORDS`),
- a partial removal of the photo's original low-frequency shading,

then upsampled and applied with a soft highlight roll-off. With an alpha channel the subject is
first composited onto gray 127 (as IC-Light does), and that background is lit by the same light.
Shadows cast by one part onto another, materials, specular highlights and a prompt-matching
background are out of its reach. The same subject, params and seed give the same pixels.

Progress is reported by stages of about equal cost: preparing the scene counts as much as one
variation, and a variation reports after its light field and after each colour channel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from inference.engines.base import ProgressCallback, ProgressCounter
from relight.core.images import resize_and_center_crop
from relight.core.params import LightSource, RelightParams

FloatArray = npt.NDArray[np.float32]
RGB = tuple[float, float, float]

BACKGROUND_GRAY = 127
# The light field is smooth, so it is computed at 1/FIELD_DOWNSCALE of the output size.
FIELD_DOWNSCALE = 4
# Index steps per unit of 8-bit input in the tone-curve lookup table.
LUT_STEPS = 4
GAMMA = 2.2

_NEUTRAL: RGB = (1.0, 1.0, 1.0)

# Progress stages of one variation: its light field, then each of the three channels. Preparing
# the scene is counted as the same number of stages (it costs about one variation).
STAGES_PER_IMAGE = 4


@dataclass(frozen=True, slots=True)
class LightStyle:
    """What some lighting words say about the light; None means no opinion on the colour."""

    key: RGB | None = None
    fill: RGB | None = None
    intensity: float = 1.0
    contrast: float = 1.0
    fill_strength: float = 1.0


# Colours are linear-light RGB; they are normalised to unit luminance, so only `intensity`
# changes the exposure. Word stems are matched case-insensitively at word boundaries.
_KEYWORDS: tuple[tuple[str, LightStyle], ...] = (
    (
        r"sunset|sunrise|golden hour|dusk|dawn|warm\w*|amber",
        LightStyle(key=(1.0, 0.52, 0.2), fill=(0.75, 0.55, 0.5)),
    ),
    (
        r"candle\w*|fire\w*|flames?|torch\w*|lantern\w*",
        LightStyle(key=(1.0, 0.42, 0.12), fill=(0.5, 0.32, 0.25), intensity=0.85, contrast=1.25),
    ),
    (
        r"neon|cyberpunk|synthwave",
        LightStyle(key=(1.0, 0.15, 0.75), fill=(0.1, 0.8, 1.0), fill_strength=2.2),
    ),
    (
        r"moon\w*|night\w*|cool|cold|blue|icy|winter",
        LightStyle(key=(0.45, 0.62, 1.0), fill=(0.35, 0.42, 0.75), intensity=0.7),
    ),
    (r"studio|daylight|natural|white", LightStyle(key=_NEUTRAL, fill=_NEUTRAL)),
    (r"soft\w*|diffused?|overcast|cloudy", LightStyle(key=_NEUTRAL, contrast=0.7)),
    (r"dramatic|hard|contrasty?|high[- ]contrast|noir|spotlight", LightStyle(contrast=1.5)),
    (r"dim\w*|dark\w*|gloomy|shadowy|low[- ]key", LightStyle(intensity=0.65)),
    (r"bright\w*|sunny|sunlight|sunshine|high[- ]key", LightStyle(intensity=1.25)),
    (r"red", LightStyle(key=(1.0, 0.2, 0.15))),
    (r"green", LightStyle(key=(0.3, 1.0, 0.35))),
    (r"purple|violet", LightStyle(key=(0.6, 0.25, 1.0))),
    (r"pink|magenta", LightStyle(key=(1.0, 0.35, 0.7))),
    (r"orange", LightStyle(key=(1.0, 0.5, 0.15))),
    (r"cyan|teal", LightStyle(key=(0.2, 0.85, 1.0))),
)
_KEYWORD_PATTERNS = tuple(
    (re.compile(rf"\b(?:{words})\b", re.IGNORECASE), style) for words, style in _KEYWORDS
)

# Direction the light comes from, as an angle in image coordinates (x right, y down).
_DIRECTIONS: dict[LightSource, float] = {
    LightSource.LEFT: math.pi,
    LightSource.RIGHT: 0.0,
    LightSource.TOP: -math.pi / 2,
    LightSource.BOTTOM: math.pi / 2,
}


def light_style(prompt: str) -> LightStyle:
    """Combine every matching keyword entry: colours averaged, strengths multiplied."""
    keys: list[RGB] = []
    fills: list[RGB] = []
    intensity = 1.0
    contrast = 1.0
    fill_strength = 1.0
    for pattern, style in _KEYWORD_PATTERNS:
        if pattern.search(prompt) is None:
            continue
        if style.key is not None:
            keys.append(style.key)
        if style.fill is not None:
            fills.append(style.fill)
        intensity *= style.intensity
        contrast *= style.contrast
        fill_strength *= style.fill_strength
    key = _mean_colour(keys) if keys else _NEUTRAL
    # Without a fill opinion the fill is a paler version of the key, as bounce light would be.
    fill = _mean_colour(fills) if fills else _mix(key, _NEUTRAL, 0.6)
    return LightStyle(
        key=key,
        fill=fill,
        intensity=min(max(intensity, 0.35), 1.8),
        contrast=min(max(contrast, 0.5), 2.2),
        fill_strength=min(max(fill_strength, 0.3), 3.0),
    )


def _mean_colour(colours: list[RGB]) -> RGB:
    n = len(colours)
    return (
        sum(c[0] for c in colours) / n,
        sum(c[1] for c in colours) / n,
        sum(c[2] for c in colours) / n,
    )


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _unit_luminance(colour: RGB) -> RGB:
    luminance = 0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]
    # A floor keeps saturated colours (deep blue, magenta) from being boosted past any use.
    scale = 1.0 / max(luminance, 0.4)
    return (colour[0] * scale, colour[1] * scale, colour[2] * scale)


def _box_blur(a: FloatArray, radius: int) -> FloatArray:
    """Separable box blur with edge padding, via cumulative sums (cost independent of radius)."""
    if radius < 1:
        return a
    out = a
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        summed = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float64)
        size = 2 * radius + 1
        if axis == 0:
            window = summed[size:, :] - summed[:-size, :]
        else:
            window = summed[:, size:] - summed[:, :-size]
        out = (window / size).astype(np.float32)
    return out


def _smooth(a: FloatArray, sigma: float) -> FloatArray:
    """Three box passes of radius r approximate a Gaussian of sigma ≈ r + 0.5."""
    r = max(1, round(sigma - 0.5))
    return _box_blur(_box_blur(_box_blur(a, r), r), r)


def _tone_lut(size: int) -> npt.NDArray[np.uint8]:
    """Identity up to a knee, then an exponential shoulder towards white: highlights roll off."""
    y = (np.arange(size, dtype=np.float32) + 0.5) / np.float32(255 * LUT_STEPS)
    knee = np.float32(0.78)
    span = np.float32(1.0) - knee
    shoulder = knee + span * (1.0 - np.exp(-(y - knee) / span))
    out = np.where(y <= knee, y, shoulder)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True, slots=True)
class _Scene:
    """Per-request state shared by every variation."""

    base: npt.NDArray[np.float32]  # (3, H, W) planar, 0..255, at output size
    nx: FloatArray
    ny: FloatArray
    nz: FloatArray
    u: FloatArray  # low-res x coordinate, -0.5..0.5
    v: FloatArray
    flatten: FloatArray
    weight: FloatArray
    output_size: tuple[int, int]


class ClassicEngine:
    """Deterministic CPU relight (see the module docstring); fast enough to serve inline."""

    name: str = "classic"
    model: str = "classic-v1"
    serves_backgrounds: bool = False

    def relight(
        self,
        subject: Image.Image,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None = None,
        background: Image.Image | None = None,
    ) -> list[Image.Image]:
        if params.background_source is not None:
            raise ValueError("the classic engine does not relight onto backgrounds")
        count = params.number_of_images
        stages = ProgressCounter(progress, total=STAGES_PER_IMAGE * (count + 1))
        scene = _prepare(subject, params, stages.advance)
        style = light_style(params.prompt)
        images: list[Image.Image] = []
        for index in range(count):
            # SeedSequence wants non-negative entries; the index makes each variation distinct.
            rng = np.random.default_rng([seed % 2**64, index])
            images.append(_render(scene, style, params.light_source, rng, stages.advance))
        return images


def _ignore(stages: int = 1) -> None:
    """The stage counter of a caller that wants no progress."""


def _prepare(
    subject: Image.Image, params: RelightParams, advance: Callable[[int], None] = _ignore
) -> _Scene:
    out_w, out_h = params.output_size
    lo_size = (max(8, out_w // FIELD_DOWNSCALE), max(8, out_h // FIELD_DOWNSCALE))
    composite, mask_lo = _composite(subject, params, lo_size)

    # IC-Light stretches (never crops) to the highres size, which may differ in aspect slightly.
    full = composite.resize((out_w, out_h), Image.Resampling.BICUBIC)
    base = np.ascontiguousarray(np.asarray(full, dtype=np.float32).transpose(2, 0, 1))
    # The full-size resize and copy are about half of the preparation's cost.
    advance(STAGES_PER_IMAGE // 2)

    lum = _to_float(composite.convert("L").resize(lo_size, Image.Resampling.BOX))
    lum /= np.float32(255)
    lo_w, lo_h = lo_size
    scale = min(lo_w, lo_h)
    nx, ny, inv = _normals(lum, mask_lo, scale)

    weight = mask_lo if mask_lo is not None and float(mask_lo.mean()) > 1e-3 else None
    if weight is None:
        weight = np.ones_like(lum)

    # Undo part of the photo's own broad shading so the new light, not the old, dominates.
    broad = _smooth(lum, scale / 13)
    reference = float((broad * weight).sum() / weight.sum())
    flatten = np.clip(((reference + 0.05) / (broad + 0.05)) ** 0.3, 0.75, 1.35)
    flatten = (1.0 + weight * (flatten - 1.0)).astype(np.float32)

    u = (np.arange(lo_w, dtype=np.float32) + 0.5) / np.float32(lo_w) - np.float32(0.5)
    v = (np.arange(lo_h, dtype=np.float32) + 0.5) / np.float32(lo_h) - np.float32(0.5)
    advance(STAGES_PER_IMAGE - STAGES_PER_IMAGE // 2)
    return _Scene(
        base=base,
        nx=nx * inv,
        ny=ny * inv,
        nz=inv,
        u=u[None, :],
        v=v[:, None],
        flatten=flatten,
        weight=weight,
        output_size=(out_w, out_h),
    )


def _composite(
    subject: Image.Image, params: RelightParams, lo_size: tuple[int, int]
) -> tuple[Image.Image, FloatArray | None]:
    """The subject cropped to W×H, on gray 127 when it has alpha; and its low-res mask."""
    if subject.mode not in ("RGB", "RGBA"):
        has_alpha = subject.mode in ("LA", "PA", "La") or "transparency" in subject.info
        subject = subject.convert("RGBA" if has_alpha else "RGB")
    crop = resize_and_center_crop(subject, params.width, params.height)
    if crop.mode != "RGBA":
        return crop, None
    alpha = crop.getchannel("A")
    background = Image.new("RGB", crop.size, (BACKGROUND_GRAY,) * 3)
    composite = Image.composite(crop.convert("RGB"), background, alpha)
    return composite, _to_float(alpha.resize(lo_size, Image.Resampling.BOX)) / np.float32(255)


def _normals(
    lum: FloatArray, mask_lo: FloatArray | None, scale: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Unnormalised normals (nx, ny) of a pseudo-3D height field, and 1 / their length."""
    # Height field: the silhouette bulges, and bright detail reads as slightly raised.
    height = np.float32(0.25) * _smooth(lum, scale / 80)
    if mask_lo is not None:
        height += _smooth(mask_lo, scale / 20)
    grad_y, grad_x = np.gradient(height)
    # Per-pixel gradients are rescaled to per-frame units so the tilt does not depend on size.
    nx = (grad_x * np.float32(-0.35 * scale)).astype(np.float32)
    ny = (grad_y * np.float32(-0.35 * scale)).astype(np.float32)
    if mask_lo is not None:
        # The background is a flat card: without this the blurred silhouette would leave a
        # lit/shaded halo around the subject.
        nx *= mask_lo
        ny *= mask_lo
    inv = (1.0 / np.sqrt(nx * nx + ny * ny + 1.0)).astype(np.float32)
    return nx, ny, inv


def _render(
    scene: _Scene,
    style: LightStyle,
    source: LightSource,
    rng: np.random.Generator,
    advance: Callable[[int], None] = _ignore,
) -> Image.Image:
    key_map, fill_map = _light_maps(scene, style, source, rng)
    total = key_map + fill_map
    mean = float((total * scene.weight).sum() / scene.weight.sum())
    exposure = style.intensity * rng.uniform(0.93, 1.07) / max(mean, 1e-3)

    # Colour temperature jitter: a small warm/cool shift of the key.
    temperature = rng.uniform(-0.05, 0.05)
    key = _unit_luminance(style.key or _NEUTRAL)
    key = (key[0] * (1 + temperature), key[1], key[2] * (1 - temperature))
    fill = _unit_luminance(style.fill or _NEUTRAL)

    planes: list[FloatArray] = []
    for c in range(3):
        light = (key[c] * key_map + fill[c] * fill_map) * exposure
        # Lighting multiplies, and multiplication commutes with a power gamma, so the linear
        # field is converted once here, at low resolution, and applied to the sRGB pixels.
        field = np.power(np.maximum(light, 0.0), 1.0 / GAMMA) * scene.flatten
        # Past 16x every pixel is white anyway; the cap keeps LUT indices within uint16.
        planes.append((np.minimum(field, 16.0) * LUT_STEPS).astype(np.float32))
    peak = max(float(p.max()) for p in planes)
    lut = _tone_lut(int(255 * peak) + 2)
    advance(1)
    channels: list[Image.Image] = []
    for c, field in enumerate(planes):
        up = np.asarray(
            Image.fromarray(field).resize(scene.output_size, Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        # Bilinear upsampling never exceeds the low-res peak, so indices stay inside the LUT.
        product = scene.base[c] * up
        channels.append(Image.fromarray(np.take(lut, product.astype(np.uint16))))
        advance(1)
    return Image.merge("RGB", channels)


def _light_maps(
    scene: _Scene, style: LightStyle, source: LightSource, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """The key and fill light at low resolution, from a seed-jittered light direction."""
    contrast = style.contrast
    if source in _DIRECTIONS:
        angle = _DIRECTIONS[source] + rng.uniform(-0.17, 0.17)
        elevation = math.radians(min(80.0, 55.0 + 15.0 * (contrast - 1.0)) + rng.uniform(-6, 6))
        ramp_gain = 1.0
        fill_ratio = 0.3 * style.fill_strength / contrast
    else:
        # No light source: a soft, mostly frontal light from a seed-chosen side.
        angle = rng.uniform(-math.pi, math.pi)
        elevation = math.radians(25.0 + rng.uniform(-5, 5))
        ramp_gain = 0.25
        fill_ratio = 0.6 * style.fill_strength / contrast
    dx, dy = math.cos(angle), math.sin(angle)
    sin_e, cos_e = math.sin(elevation), math.cos(elevation)
    lx, ly = dx * sin_e, dy * sin_e

    # A ramp across the frame towards the light, as IC-Light's gradient initial image.
    ramp = np.clip(0.5 + ramp_gain * (scene.u * dx + scene.v * dy) * 1.6, 0.0, 1.0)
    wrap = 0.6 / contrast
    ndotl = scene.nx * lx + scene.ny * ly + scene.nz * cos_e
    diffuse = np.maximum((ndotl + wrap) / (1.0 + wrap), 0.0)
    back = np.maximum((cos_e * scene.nz - scene.nx * lx - scene.ny * ly + 1.0) * 0.5, 0.0)
    key_map = (0.12 + 0.88 * ramp**contrast) * diffuse
    fill_map = fill_ratio * (0.5 + 0.5 * (1.0 - ramp)) * back
    return key_map, fill_map


def _to_float(image: Image.Image) -> FloatArray:
    return np.asarray(image, dtype=np.float32).copy()
