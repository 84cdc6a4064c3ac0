"""Hostile subject images: refused with a 4xx before any pixel is allocated."""

from __future__ import annotations

import base64
import io
import struct
import tracemalloc
import zipfile
import zlib

import httpx
import pytest
from PIL import Image

from relight.core.errors import ImageTooLarge, InvalidImage
from relight.core.images import decode_image
from tests.conftest import TenantKey, example_bytes

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def huge_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few hundred bytes that claim 2.5 gigapixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * 64) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows)


def zip_named_png() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat.png", example_bytes())
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(example_bytes())).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'


def animated_gif_renamed() -> bytes:
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


HOSTILE = [
    pytest.param(huge_png(), 413, id="50000x50000-png"),
    pytest.param(zip_named_png(), 400, id="zip-renamed-png"),
    pytest.param(truncated_jpeg(), 400, id="truncated-jpeg"),
    pytest.param(SVG, 400, id="svg"),
    pytest.param(animated_gif_renamed(), 400, id="gif"),
    pytest.param(animated_webp(), 400, id="animated-webp"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 400, id="png-signature-then-junk"),
]


@pytest.mark.parametrize(("data", "status"), HOSTILE)
def test_decoding_refuses_with_the_right_error(data: bytes, status: int) -> None:
    with pytest.raises(ImageTooLarge if status == 413 else InvalidImage):
        decode_image(data, **LIMITS)


def test_the_bomb_is_refused_before_pixels_are_allocated() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge):
            decode_image(huge_png(), **LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024  # 2.5 Gpx of RGB would be 7.5 GB


@pytest.mark.parametrize(("data", "status"), HOSTILE)
async def test_submit_answers_4xx_and_creates_nothing(
    client: httpx.AsyncClient, tenant: TenantKey, data: bytes, status: int
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json={"prompt": "cat", "subject_image": base64.b64encode(data).decode()},
    )
    assert response.status_code == status, response.text
    listing = await client.get("/v2/requests", headers=tenant.headers)
    assert listing.json()["data"] == []
