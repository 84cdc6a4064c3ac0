"""Submit checks an inline image's structure without its pixels; the worker decodes with
bounded memory (issue 15, item 2).

`verify_structure` must accept every well-formed image Pillow reads (with the size Pillow
reads) and refuse every truncation of it, the issue's 631-byte JPEG declaring 6000x6600
included, while holding a few hundred kilobytes at most; `decode_image` given the crop size
keeps no more pixels than the output needs.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from relight.core.errors import ImageTooLarge, InvalidImage
from relight.core.image_structure import ADAM7, verify_structure
from relight.core.images import covering_size, decode_image, normalize, reduce_covering
from tests.conftest import example_bytes

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def synthetic_png(
    width: int, height: int, depth: int, color_type: int, channels: int, interlace: int = 0
) -> bytes:
    """A PNG written by hand (Pillow writes neither Adam7 nor 16-bit RGBA), all-zero rows
    streamed through zlib, so even 40 Mpx costs little memory to make."""
    compressor = zlib.compressobj(9)
    parts: list[bytes] = []
    for x0, y0, dx, dy in ADAM7 if interlace else [(0, 0, 1, 1)]:
        columns = max(0, -(-(width - x0) // dx))
        rows = max(0, -(-(height - y0) // dy))
        if columns and rows:
            row = b"\x00" * (1 + -(-(columns * channels * depth) // 8))
            parts.extend(compressor.compress(row) for _ in range(rows))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def truncated_6000x6600_jpeg() -> bytes:
    """The issue's file: a 16x16 JPEG whose frame header claims 6000x6600 (631 bytes).
    Pillow decodes it without complaint, into 6000x6600 grey."""
    data = bytearray(encoded(Image.new("RGB", (16, 16)), "JPEG"))
    frame = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, 6600, 6000)
    return bytes(data)


def forty_megapixel_png() -> bytes:
    """The issue's other file: 16-bit RGBA, 6324x6324 = 39.99 Mpx, about 311 KB."""
    return synthetic_png(6324, 6324, 16, 6, 4)


NOISE = Image.fromarray(np.random.default_rng(7).integers(0, 255, (181, 243, 3), dtype=np.uint8))
FLAT = Image.new("RGB", (1000, 800), (10, 20, 30))
WELL_FORMED = {
    "jpeg": encoded(NOISE, "JPEG"),
    "jpeg-progressive": encoded(NOISE, "JPEG", progressive=True),
    "jpeg-flat-low-quality": encoded(FLAT, "JPEG", quality=5, progressive=True),
    "jpeg-grey": encoded(NOISE.convert("L"), "JPEG"),
    "jpeg-cmyk": encoded(NOISE.convert("CMYK"), "JPEG"),
    "jpeg-444": encoded(NOISE, "JPEG", subsampling=0),
    "jpeg-restart-markers": encoded(NOISE, "JPEG", restart_marker_blocks=1),
    "png": encoded(NOISE, "PNG"),
    "png-rgba": encoded(NOISE.convert("RGBA"), "PNG"),
    "png-grey": encoded(NOISE.convert("L"), "PNG"),
    "png-1bit": encoded(NOISE.convert("1"), "PNG"),
    "png-palette": encoded(NOISE.convert("P"), "PNG"),
    "png-16bit-grey": encoded(
        Image.fromarray(np.arange(33 * 47, dtype=np.uint16).reshape(33, 47) * 40), "PNG"
    ),
    "png-16bit-rgba-adam7": synthetic_png(37, 23, 16, 6, 4, interlace=1),
    "png-2bit-grey-adam7": synthetic_png(9, 5, 2, 0, 1, interlace=1),
    "png-1x1-adam7": synthetic_png(1, 1, 8, 2, 3, interlace=1),
    "webp": encoded(NOISE, "WEBP"),
    "webp-lossless": encoded(NOISE, "WEBP", lossless=True),
    "webp-alpha": encoded(NOISE.convert("RGBA"), "WEBP"),
    "chelsea.png": example_bytes(),
}


@pytest.mark.parametrize("name", list(WELL_FORMED))
def test_a_well_formed_image_passes_with_the_size_pillow_reads(name: str) -> None:
    data = WELL_FORMED[name]

    header = verify_structure(data, **LIMITS)

    with Image.open(io.BytesIO(data)) as image:
        assert (header.width, header.height) == image.size
        image.load()  # and Pillow really decodes it


@pytest.mark.parametrize("name", list(WELL_FORMED))
def test_every_truncation_of_a_well_formed_image_is_refused(name: str) -> None:
    data = WELL_FORMED[name]
    cuts = sorted({1, 2, 10, 30, len(data) // 3, len(data) // 2, len(data) - 2, len(data) - 1})
    for cut in cuts:
        with pytest.raises(InvalidImage):
            verify_structure(data[:cut], **LIMITS)


def test_the_631_byte_jpeg_declaring_6000x6600_is_refused_as_truncated() -> None:
    data = truncated_6000x6600_jpeg()
    assert len(data) == 631
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (6000, 6600)  # what the header claims

    with pytest.raises(InvalidImage, match="cannot hold 6000x6600"):
        verify_structure(data, **LIMITS)
    with pytest.raises(InvalidImage, match="cannot hold 6000x6600"):
        decode_image(data, **LIMITS, crop_width=512, crop_height=640)


def test_a_png_whose_zlib_stream_stops_short_is_refused() -> None:
    complete = zlib.compress(b"\x00" * (1 + 3 * 64) * 64)
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    short = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", complete[: len(complete) // 2])  # valid CRC, cut stream
        + png_chunk(b"IEND", b"")
    )

    with pytest.raises(InvalidImage, match="image data"):
        verify_structure(short, **LIMITS)


def test_an_arithmetic_coded_jpeg_is_refused() -> None:
    data = bytearray(WELL_FORMED["jpeg"])
    frame = data.find(b"\xff\xc0")
    data[frame + 1] = 0xC9  # SOF9: arithmetic coding

    with pytest.raises(InvalidImage, match="not supported"):
        verify_structure(bytes(data), **LIMITS)


def test_the_forty_megapixel_png_is_checked_in_bounded_memory() -> None:
    data = forty_megapixel_png()
    assert len(data) < 400_000
    tracemalloc.start()
    try:
        header = verify_structure(data, **LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (header.width, header.height, header.bits_per_sample) == (6324, 6324, 16)
    assert peak < 4 * 1024 * 1024, peak  # it inflates to 320 MB, a megabyte at a time
    with pytest.raises(ImageTooLarge):
        verify_structure(data, max_bytes=LIMITS["max_bytes"], max_pixels=39_000_000)


# --- the worker: decoding no more than the output needs --------------------------------------


def test_a_large_jpeg_is_decoded_at_the_smallest_scale_that_covers_the_output() -> None:
    large = NOISE.resize((4000, 3000))
    data = encoded(large, "JPEG", quality=70)

    image = decode_image(data, **LIMITS, crop_width=512, crop_height=640)

    needed = covering_size((4000, 3000), (512, 640))
    assert image.width >= needed[0]
    assert image.height >= needed[1]
    assert image.width < 2 * needed[0]  # 1/4 scale: 1000x750
    assert image.mode == "RGB"


def test_a_sideways_jpeg_covers_the_output_once_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    data = encoded(NOISE.resize((4000, 1000)), "JPEG", exif=exif.tobytes())

    image = decode_image(data, **LIMITS, crop_width=256, crop_height=1024)

    assert image.size == (500, 2000)  # upright, at 1/2 scale: still covering 256x1024


def test_a_large_png_is_reduced_after_decoding() -> None:
    data = encoded(NOISE.resize((2400, 2000)), "PNG")

    image = decode_image(data, **LIMITS, crop_width=256, crop_height=256)

    assert image.size == (343, 286)  # reduced by 7, still covering 256x256


@pytest.mark.parametrize("mode", ["P", "1", "I;16", "LA"])
def test_modes_that_cannot_be_reduced_directly_are_converted_first(mode: str) -> None:
    base = NOISE.resize((1200, 1000))
    if mode == "I;16":
        source = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    else:
        source = base.convert(mode)
    data = encoded(source, "PNG")

    image = decode_image(data, **LIMITS, crop_width=256, crop_height=256)

    assert image.mode in ("RGB", "RGBA")
    assert image.size == (400, 334)  # reduced by 3


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_reducing_band_by_band_gives_the_pixels_of_one_reduce(mode: str) -> None:
    source = NOISE.resize((1031, 777)).convert(mode)  # odd sizes: partial blocks at the edges

    banded = reduce_covering(source, (100, 100))  # factor 7, bands of 252 rows

    assert banded.size == source.reduce(7).size
    assert banded.tobytes() == source.reduce(7).tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_normalize_turns_images_upright_as_pillow_does(orientation: int) -> None:
    """Contract test for the orientation table: Pillow's `exif_transpose` is the reference."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(NOISE.convert("RGB"), "PNG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        expected = ImageOps.exif_transpose(image).convert("RGB")
        ours = normalize(image)

    assert ours.size == expected.size
    assert ours.tobytes() == expected.tobytes()


MEASURE = """
import resource, sys
from relight.core.images import decode_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
limits = {'max_bytes': 20 * 2**20, 'max_pixels': 40_000_000}
image = decode_image(data, **limits, crop_width=512, crop_height=640)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024, image.size[0], image.size[1])
"""


def peak_decode_mb(path: str) -> tuple[int, tuple[int, int]]:
    """Peak RSS growth (MB) of decoding `path` for a 512x640 output, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, path], capture_output=True, text=True, check=True
    )
    grown, width, height = (int(part) for part in result.stdout.split())
    return grown, (width, height)


@pytest.mark.slow
def test_a_job_decodes_the_largest_inputs_in_bounded_memory(tmp_path: object) -> None:
    """Measured in a fresh process: the 40 Mpx PNG peaks near its 4 bytes a pixel (160 MB),
    a 24 Mpx JPEG at 1/4 scale at a few megabytes."""
    from pathlib import Path

    folder = Path(str(tmp_path))
    png = folder / "forty.png"
    png.write_bytes(forty_megapixel_png())
    jpeg = folder / "large.jpg"
    jpeg.write_bytes(encoded(NOISE.resize((6000, 4000)), "JPEG", quality=60))

    png_mb, png_size = peak_decode_mb(str(png))
    jpeg_mb, jpeg_size = peak_decode_mb(str(jpeg))

    assert png_size == (703, 703)  # 6324 reduced by 9, covering 512x640
    assert png_mb < 200, png_mb
    assert jpeg_size == (1500, 1000)  # decoded at 1/4 scale
    assert jpeg_mb < 40, jpeg_mb


ORIENTATION = """
import resource, sys
from relight.core.image_metadata import orientation_of
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
value = orientation_of(data)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, value)
"""


@pytest.mark.slow
def test_the_orientation_of_a_large_png_is_read_without_its_pixels(tmp_path: object) -> None:
    """What the API does before storing a subject: Pillow's PNG `getexif` would decode all
    40 Mpx to look for an eXIf after the image data."""
    from pathlib import Path

    exif = Image.Exif()
    exif[0x0112] = 6
    data = forty_megapixel_png()
    iend = data.rindex(b"IEND") - 4
    tagged = data[:iend] + png_chunk(b"eXIf", exif.tobytes()[6:]) + data[iend:]
    path = Path(str(tmp_path)) / "tagged.png"
    path.write_bytes(tagged)

    result = subprocess.run(
        [sys.executable, "-c", ORIENTATION, str(path)], capture_output=True, text=True, check=True
    )

    grown_mb, orientation = (int(part) for part in result.stdout.split())
    assert orientation == 6
    assert grown_mb < 20, grown_mb
