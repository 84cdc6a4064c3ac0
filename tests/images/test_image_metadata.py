"""Stored inputs lose their metadata (GPS above all) but not their pixels or orientation;
outputs never carry any."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from relight.core.config import Settings
from relight.core.image_metadata import strip_metadata
from relight.core.images import decode_image
from tests.conftest import RunWorker, TenantKey

GPS_IFD = 0x8825
MAKE = 0x010F
ORIENTATION = 0x0112


def photo_with_metadata(fmt: str, orientation: int = 6) -> bytes:
    image = Image.new("RGB", (64, 32), "red")
    for x in range(32):
        image.putpixel((x, 5), (0, 0, 255))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "SecretCam"
    exif[GPS_IFD] = {1: "N", 2: (52.0, 31.0, 0.0)}
    buffer = io.BytesIO()
    extra = {"comment": b"our secret place"} if fmt == "JPEG" else {}
    image.save(buffer, fmt, exif=exif.tobytes(), **extra)
    return buffer.getvalue()


def pixels(data: bytes) -> bytes:
    return decode_image(data, max_bytes=10**7, max_pixels=10**7).tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_metadata_goes_pixels_and_orientation_stay(fmt: str) -> None:
    original = photo_with_metadata(fmt)
    stripped = strip_metadata(original)

    with Image.open(io.BytesIO(stripped)) as image:
        assert dict(image.getexif()) == {ORIENTATION: 6}
    assert b"SecretCam" not in stripped
    assert b"secret place" not in stripped
    assert pixels(stripped) == pixels(original)
    assert decode_image(stripped, max_bytes=10**7, max_pixels=10**7).size == (32, 64)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_upright_image_keeps_no_exif_at_all(fmt: str) -> None:
    stripped = strip_metadata(photo_with_metadata(fmt, orientation=1))
    with Image.open(io.BytesIO(stripped)) as image:
        assert dict(image.getexif()) == {}


def test_files_it_cannot_parse_do_not_break_it() -> None:
    assert strip_metadata(b"not an image") == b"not an image"
    # Truncated files never reach storage (decoding refuses them first); no crash either way.
    assert strip_metadata(photo_with_metadata("JPEG")[:40]).startswith(b"\xff\xd8")


async def test_the_stored_input_has_no_gps_and_outputs_have_no_exif(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings, run_worker: RunWorker
) -> None:
    original = photo_with_metadata("JPEG")
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json={"prompt": "cat", "subject_image": base64.b64encode(original).decode()},
    )
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    [stored] = list((settings.storage_dir / "inputs").rglob(request_id))
    data = stored.read_bytes()
    assert b"SecretCam" not in data
    with Image.open(io.BytesIO(data)) as image:
        assert GPS_IFD not in image.getexif()

    await run_worker()
    record = (await client.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    output = await client.get(record["outputs"][0]["url"].removeprefix("http://testserver"))
    with Image.open(io.BytesIO(output.content)) as image:
        assert dict(image.getexif()) == {}
        # The subject was upright-corrected before relighting: a portrait output.
        assert image.size == (768, 960)


def _multi_picture_jpeg() -> bytes:
    """A phone-style MPO (Pillow writes the MPF index): a red primary picture, then a green one."""
    primary = Image.new("RGB", (64, 48), (200, 10, 10))
    second = Image.new("RGB", (64, 48), (10, 200, 10))
    buffer = io.BytesIO()
    primary.save(buffer, "MPO", save_all=True, append_images=[second])
    return buffer.getvalue()


def _jpeg(color: tuple[int, int, int], exif: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_pictures_after_the_primary_one_go_with_their_gps() -> None:
    gps = Image.Exif()
    gps.get_ifd(0x8825)[2] = (48.0, 51.0, 30.0)  # GPSLatitude
    second = _jpeg((10, 200, 10), gps.tobytes())
    for original in (_multi_picture_jpeg() + second, _jpeg((200, 10, 10)) + second):
        assert original.count(b"Exif\0\0") == 1  # the second picture's, with the GPS block

        stripped = strip_metadata(original)

        with Image.open(io.BytesIO(stripped)) as opened:
            assert (opened.format, getattr(opened, "n_frames", 1)) == ("JPEG", 1)
            assert np.asarray(opened.convert("RGB"))[5, 5, 0] > 150  # the red primary picture
        assert b"Exif\0\0" not in stripped
        assert b"MPF\0" not in stripped
        assert pixels(stripped) == pixels(original)


def test_the_worker_decodes_a_multi_picture_jpeg_as_its_primary_picture() -> None:
    original = _multi_picture_jpeg()
    with Image.open(io.BytesIO(original)) as opened:
        assert (opened.format, getattr(opened, "n_frames", 1)) == ("MPO", 2)
    image = decode_image(original, max_bytes=10_000_000, max_pixels=10_000_000)
    assert image.size == (64, 48)
    assert np.asarray(image.convert("RGB"))[5, 5, 0] > 150
