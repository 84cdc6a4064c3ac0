"""`relight-worker` with a backend that does no work, for measuring dispatch alone.

The worker is the product's (`build_worker`: the runner, claim, storage, credits, webhooks,
wake-up); only the `local` backend is replaced, through `build_worker(backends=...)`, by one that
answers a tiny image at once.

    .venv/bin/python bench/noop_worker.py   (RELIGHT_* settings from the environment)
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import uvloop
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relight.config import get_settings  # noqa: E402
from relight.jobs.backend import (  # noqa: E402
    BackendCall,
    BackendResult,
    JobInput,
    ProgressCallback,
    RenderedImage,
)
from relight.logs import configure_logging  # noqa: E402
from relight.params import Backend as BackendName  # noqa: E402
from relight.params import RelightParams  # noqa: E402
from worker.settings import build_worker  # noqa: E402


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


class NoopBackend:
    """Answers one 8×8 image immediately, whatever was asked."""

    name = BackendName.LOCAL.value

    def __init__(self) -> None:
        self._image = tiny_png()

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        image = RenderedImage(self._image, "image/png", 8, 8, seed)
        return BackendResult(images=[image])


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.set_event_loop(uvloop.new_event_loop())
    build_worker(settings, backends={BackendName.LOCAL: NoopBackend()}).run()


if __name__ == "__main__":
    main()
