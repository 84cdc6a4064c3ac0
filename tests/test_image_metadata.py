"""Stored inputs lose their metadata (GPS above all) but not their pixels or orientation;
outputs never carry any."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from relight.config import Settings
from relight.image_metadata import strip_metadata
from relight.images import decode_image
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
