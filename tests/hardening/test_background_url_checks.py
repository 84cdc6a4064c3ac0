"""A background fetched by URL (issue 28, break 7): it gets its own structure checks and errors,
named `background_image`, in the worker when fetched, before the job is sent anywhere; a GIF,
text, a truncated JPEG or a 100000² PNG used to reach the node and end `upstream_rejected`
("subject_image is not a JPEG…"). The inputs are loaded as the worker loads them, from a real
image server on 127.0.0.1."""

from __future__ import annotations

import io
import struct
import uuid
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from relight.core.config import Settings
from relight.core.errors import RelightError
from relight.core.fetch import fetch_image_bytes
from relight.core.models import Job
from relight.core.storage import FileSystemStorage
from relight.jobs.job_images import load_input
from tests.conftest import example_bytes
from tests.fakes.image_server import ImageServer


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` (its pixels are never reached)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + crc


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, format="JPEG")
    return buffer.getvalue()


BAD_BACKGROUNDS = [
    pytest.param(b"GIF89a" + b"\0" * 64, "invalid_image", "not a JPEG, PNG or WebP", id="gif"),
    pytest.param(b"just some text", "invalid_image", "not a JPEG, PNG or WebP", id="text"),
    pytest.param(jpeg_bytes()[:200], "invalid_image", "truncated", id="truncated-jpeg"),
    pytest.param(png_header(100_000, 100_000), "image_too_large", "pixels", id="huge-png"),
]


def job_with_background(image_server: ImageServer, background_url: str) -> Job:
    return Job(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        params={"width": 64, "height": 64},
        input_storage_key=None,
        input_url=image_server.add("/subject.png", example_bytes()),
        background_storage_key=None,
        background_url=background_url,
        backend_requested="gpu",
    )


@pytest.mark.parametrize(("data", "code", "words"), BAD_BACKGROUNDS)
async def test_a_bad_background_url_fails_with_its_own_error_when_fetched(
    settings: Settings,
    image_server: ImageServer,
    tmp_path: Path,
    data: bytes,
    code: str,
    words: str,
) -> None:
    job = job_with_background(image_server, image_server.add("/background", data, "image/gif"))

    async with httpx.AsyncClient() as http:
        with pytest.raises(RelightError) as refused:
            await load_input(
                job,
                storage=FileSystemStorage(tmp_path),
                http=http,
                settings=settings,
                timings={},
            )

    assert refused.value.code == code
    assert refused.value.message.startswith("background_image"), refused.value.message
    assert "subject_image" not in refused.value.message
    assert words in refused.value.message


async def test_a_good_background_url_loads(
    settings: Settings, image_server: ImageServer, tmp_path: Path
) -> None:
    job = job_with_background(image_server, image_server.add("/scene.jpg", jpeg_bytes()))

    async with httpx.AsyncClient() as http:
        loaded = await load_input(
            job, storage=FileSystemStorage(tmp_path), http=http, settings=settings, timings={}
        )

    assert loaded.background == jpeg_bytes()


async def test_a_refused_background_url_names_background_image(settings: Settings) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(RelightError) as refused:
            await fetch_image_bytes(
                http,
                "http://10.0.0.1/scene.png",
                policy=settings.egress_policy,
                max_bytes=settings.max_input_bytes,
                timeout_s=5,
                field="background_image",
            )

    assert "background_image" in refused.value.message
    assert "subject_image" not in refused.value.message
