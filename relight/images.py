"""Image decoding with limits, normalisation and encoding.

Decoding sniffs the format from the bytes (never trusts a name or a content type), reads the
dimensions from the header and refuses oversized images *before* any pixel is allocated.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from relight.errors import ImageTooLarge, InvalidImage
from relight.params import OutputFormat

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

# Pillow's own bomb guard would fire on sizes we already refuse; ours runs first, with our
# limit, and a clear message.
Image.MAX_IMAGE_PIXELS = None


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's magic bytes, or None when it is not one we take."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into an upright RGB or RGBA image, within the limits."""
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"subject_image is {len(data)} bytes; the limit is {max_bytes} bytes",
            extra={"limit_bytes": max_bytes},
        )
    if not data:
        raise InvalidImage("subject_image is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImage("subject_image is not a JPEG, PNG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"subject_image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels} pixels",
                    extra={"limit_pixels": max_pixels},
                )
            if getattr(image, "n_frames", 1) > 1:
                raise InvalidImage("animated images are not supported; send a single frame")
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"subject_image could not be decoded as {fmt}: {exc}") from exc
    return normalize(image)


def normalize(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and reduce every mode to RGB, or RGBA when there is alpha."""
    upright = ImageOps.exif_transpose(image) or image
    has_alpha = upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    )
    if upright.mode == "I;16" or upright.mode == "I":
        upright = upright.point(lambda value: value / 256).convert("L")
    result = upright.convert("RGBA" if has_alpha else "RGB")
    result.info.clear()
    return result


def resize_and_center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width×height and keep the centre (IC-Light's reference behaviour).

    The centre is cut from the source first and only that is resized, so a freak aspect ratio
    (1×3000) never turns into a gigantic intermediate image.
    """
    source_width, source_height = image.size
    scale = max(width / source_width, height / source_height)
    crop_width = min(source_width, width / scale)
    crop_height = min(source_height, height / scale)
    left = (source_width - crop_width) / 2
    top = (source_height - crop_height) / 2
    return image.resize(
        (width, height),
        Image.Resampling.LANCZOS,
        box=(left, top, left + crop_width, top + crop_height),
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
