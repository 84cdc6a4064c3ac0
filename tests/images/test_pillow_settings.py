"""Pillow's warnings about a client's damaged file stay quiet without touching the process's
warning filters from worker threads (where `warnings.catch_warnings()` is not thread-safe)."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
import threading
import warnings
from types import TracebackType

import pytest
from PIL import Image

from relight.core.image_metadata import orientation_of, strip_metadata
from relight.core.images import decode_image

IMAGE_DESCRIPTION = 0x010E
ASCII = 2


def damaged_exif_jpeg() -> bytes:
    """A JPEG whose EXIF names 100 bytes of description at an offset past its end: Pillow
    warns "Tag data larger than file" when it reads the EXIF, and decodes the pixels fine."""
    entry = struct.pack("<HHII", IMAGE_DESCRIPTION, ASCII, 100, 10_000)
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, "JPEG", exif=b"Exif\x00\x00" + tiff)
    return buffer.getvalue()


def image_work(data: bytes) -> None:
    """What the API and the worker do with a subject, in their worker threads."""
    decode_image(data, max_bytes=10**6, max_pixels=10**6)
    strip_metadata(data)
    orientation_of(data)


class CountingCatchWarnings(warnings.catch_warnings):
    """`warnings.catch_warnings` that counts the blocks entered outside the main thread."""

    entered = 0

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            CountingCatchWarnings.entered += 1
        super().__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)


@pytest.fixture
def counted_blocks(monkeypatch: pytest.MonkeyPatch) -> type[CountingCatchWarnings]:
    CountingCatchWarnings.entered = 0
    monkeypatch.setattr(warnings, "catch_warnings", CountingCatchWarnings)
    return CountingCatchWarnings


def test_the_damaged_file_makes_pillow_warn() -> None:
    """The fixture is what the other tests say it is."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(io.BytesIO(damaged_exif_jpeg())) as image:
            image.getexif()
    assert any("larger than file" in str(warning.message) for warning in caught)


async def test_image_work_in_threads_opens_no_catch_warnings_block(
    counted_blocks: type[CountingCatchWarnings],
) -> None:
    """A block's exit puts back the filters it saw on entry: in a worker thread, it undoes a
    block the event loop is in (FastAPI builds a route inside one, to hide a pydantic warning),
    and the hidden warning failed a request under `-W error`. (Failed before the change: 12
    blocks for 4 subjects, from `decode_image` and `orientation_of`.)"""
    await asyncio.gather(*(asyncio.to_thread(image_work, damaged_exif_jpeg()) for _ in range(4)))
    assert counted_blocks.entered == 0


def test_pillows_warnings_stay_quiet_even_under_w_error() -> None:
    """In a process of its own (no pytest filters): the process-wide filter, added when the
    image modules are imported, comes before `-W error`'s."""
    script = (
        "import sys; from tests.images.test_pillow_settings import damaged_exif_jpeg, image_work; "
        "image_work(damaged_exif_jpeg()); print('decoded')"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "decoded"
    assert "Warning" not in result.stderr
