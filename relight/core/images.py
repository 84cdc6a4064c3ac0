"""Image decoding with limits, normalisation and encoding.

Decoding first checks the bytes' structure (`relight.core.image_structure`: format from the magic
bytes, never a name or a content type; size from the header; complete data), so an oversized
or truncated image is refused before any pixel is allocated. Given the size the caller will
resize and crop to, it then keeps no more pixels than that needs: a JPEG is decoded at the
smallest DCT scale (1/2 to 1/8) that still covers it, any other image is reduced right after
decoding. A job's decoded subject thus peaks at about 4 bytes × `max_input_pixels` (160 MB at
the default 40 Mpx) for a PNG or WebP, briefly, and far less for a JPEG.
"""

from __future__ import annotations

import io
import math

from PIL import Image, UnidentifiedImageError

from relight.core.errors import InvalidImage
from relight.core.image_structure import verify_structure
from relight.core.params import OutputFormat
from relight.core.pillow_settings import configure_pillow

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

configure_pillow()

ORIENTATION_TAG = 0x0112
# EXIF orientation → the transpose that makes the image upright (as ImageOps.exif_transpose).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIDEWAYS = {5, 6, 7, 8}
# Modes Image.reduce works on, and the rows of a band it reduces at a time.
REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"}
REDUCE_BAND_ROWS = 256


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    crop_width: int | None = None,
    crop_height: int | None = None,
) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into an upright RGB or RGBA image, within the limits.

    `crop_width` × `crop_height`: what the caller will resize and crop to
    (`resize_and_center_crop`); the image is then decoded, or reduced, to the smallest size
    that still covers it. Without them, the full size.
    """
    cover = (crop_width, crop_height) if crop_width and crop_height else None
    fmt = verify_structure(data, max_bytes=max_bytes, max_pixels=max_pixels).format
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=[fmt])
        # A multi-picture JPEG (MPO, as phones write) is its primary picture; the others
        # (depth maps, previews) play no part. Other formats with frames are animations.
        if getattr(image, "n_frames", 1) > 1 and image.format != "MPO":
            raise InvalidImage("animated images are not supported; send a single frame")
        orientation = _orientation(image)
        if cover is not None and orientation in SIDEWAYS:
            cover = (cover[1], cover[0])  # the stored image is turned a quarter
        if cover is not None and fmt == "JPEG":
            image.draft(image.mode, covering_size(image.size, cover))
        image.load()
        if cover is not None:
            image = reduce_covering(image, covering_size(image.size, cover))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"subject_image could not be decoded as {fmt}: {exc}") from exc
    return normalize(image, orientation)


def covering_size(size: tuple[int, int], cover: tuple[int, int]) -> tuple[int, int]:
    """The smallest size of `size`'s aspect ratio that covers `cover` (never larger)."""
    scale = min(1.0, max(cover[0] / size[0], cover[1] / size[1]))
    return (max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale)))


def reduce_covering(image: Image.Image, needed: tuple[int, int]) -> Image.Image:
    """`image` shrunk by the largest whole factor that keeps it at least `needed`.

    Band by band: `Image.reduce` would first make a full-size copy of an RGBA image (to
    premultiply its alpha) and a palette image needs its colours first; a band of rows at a
    time, those copies stay a few megabytes. Bands are whole multiples of the factor, so the
    result is the same as reducing the whole image at once.
    """
    factor = min(image.width // needed[0], image.height // needed[1])
    if factor < 2:
        return image
    band = factor * max(1, REDUCE_BAND_ROWS // factor)
    reduced: Image.Image | None = None
    for top in range(0, image.height, band):
        strip = image.crop((0, top, image.width, min(image.height, top + band)))
        if strip.mode not in REDUCIBLE_MODES:
            strip = _to_rgb(strip)  # palette, 1-bit and 16-bit images: colours first
        piece = strip.reduce(factor)
        if reduced is None:
            size = (-(-image.width // factor), -(-image.height // factor))
            reduced = Image.new(piece.mode, size)
        reduced.paste(piece, (0, top // factor))
    assert reduced is not None
    return reduced


def _orientation(image: Image.Image) -> int:
    value = image.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def normalize(image: Image.Image, orientation: int | None = None) -> Image.Image:
    """Apply EXIF orientation and reduce every mode to RGB, or RGBA when there is alpha;
    without copying an image that is already upright and RGB(A)."""
    if orientation is None:
        orientation = _orientation(image)
    result = _to_rgb(image)
    if orientation != 1:
        result = result.transpose(ORIENTATION_TRANSPOSE[orientation])
    result.info.clear()
    return result


def _to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if image.mode == "I;16" or image.mode == "I":
        image = image.point(lambda value: value / 256).convert("L")
    target = "RGBA" if has_alpha else "RGB"
    return image if image.mode == target else image.convert(target)


# The whole-image resize of the reference is used while the scaled image stays within this many
# pixels (or 4× the target's, if that is more): every aspect ratio up to 4× away from W×H.
EXACT_CROP_MAX_PIXELS = 16_000_000


def resize_and_center_crop(
    image: Image.Image,
    width: int,
    height: int,
    *,
    exact_max_pixels: int = EXACT_CROP_MAX_PIXELS,
) -> Image.Image:
    """Scale to cover width×height and keep the centre, with IC-Light's reference arithmetic.

    As `gradio_demo.py` does it: the whole image is resized (LANCZOS) to
    `round(w·s) × round(h·s)` with `s = max(W/w, H/h)`, then the centre is cropped
    with the float box `((w'−W)/2, (h'−H)/2, (w'+W)/2, (h'+H)/2)`, which Pillow rounds. Those
    are the reference's pixels exactly.

    A freak aspect ratio (1×3000 into 1024×1024) would make that intermediate image gigantic:
    beyond `exact_max_pixels` (or 4× the target, if more) only the source region behind
    the same crop is resampled, at the same scale and alignment. That bounds memory by the
    target's size and can differ from the reference by a rounding step.
    """
    source_width, source_height = image.size
    scale = max(width / source_width, height / source_height)
    scaled_width = round(source_width * scale)
    scaled_height = round(source_height * scale)
    box = (
        (scaled_width - width) / 2,
        (scaled_height - height) / 2,
        (scaled_width + width) / 2,
        (scaled_height + height) / 2,
    )
    if scaled_width * scaled_height <= max(exact_max_pixels, 4 * width * height):
        return image.resize((scaled_width, scaled_height), Image.Resampling.LANCZOS).crop(box)
    # Pillow's crop rounds the box like this; map that pixel grid back onto the source.
    left, top = round(box[0]), round(box[1])
    x_step, y_step = source_width / scaled_width, source_height / scaled_height
    return image.resize(
        (width, height),
        Image.Resampling.LANCZOS,
        box=(left * x_step, top * y_step, (left + width) * x_step, (top + height) * y_step),
    )


def encode_image(image: Image.Image, output_format: OutputFormat, quality: int) -> bytes:
    """Encode without metadata; the same pixels and settings always give the same bytes."""
    buffer = io.BytesIO()
    if output_format is OutputFormat.PNG:
        # PNG is lossless: quality maps to compression effort (higher quality, smaller file).
        image.save(buffer, format="PNG", compress_level=max(1, min(9, quality // 11)))
    elif output_format is OutputFormat.JPG:
        rgb = image.convert("RGB") if image.mode != "RGB" else image
        rgb.save(buffer, format="JPEG", quality=max(1, quality), optimize=False)
    else:
        image.save(buffer, format="WEBP", quality=quality, method=2)
    return buffer.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height of an encoded image (reads the header only)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size
