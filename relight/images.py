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
