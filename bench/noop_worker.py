"""`relight-worker` with a backend that does no work, for measuring dispatch alone.

The worker is the product's (`build_worker`: the runner, claim, storage, credits, webhooks,
wake-up); only the `local` backend is replaced, through `build_worker(backends=...)`, by one that
answers a tiny image at once.

    .venv/bin/python bench/noop_worker.py [--job-ms 50]   (RELIGHT_* settings from the environment)

`--job-ms` makes every job take that long (a sleep), for benches that need jobs of a known
length (bench/fairness.py). It is run by the dispatch and fairness benchmarks; `--smoke`
only builds the worker and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path

import uvloop
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402
from relight.backends.attempts import BackendCall  # noqa: E402
from relight.backends.render_backend import (  # noqa: E402
    BackendResult,
    JobInput,
    ProgressCallback,
    RenderedImage,
)
from relight.core.config import get_settings  # noqa: E402
from relight.core.logs import configure_logging  # noqa: E402
from relight.core.params import Backend, RelightParams  # noqa: E402
from worker.settings import build_worker  # noqa: E402


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


class NoopBackend:
    """Answers one 8×8 image after `delay_s` (immediately by default), whatever was asked."""

    name = Backend.LOCAL

    def __init__(self, delay_s: float = 0.0) -> None:
        self._image = tiny_png()
        self._delay_s = delay_s

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        image = RenderedImage(self._image, "image/png", 8, 8, seed)
        return BackendResult(images=[image])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-ms", type=float, default=0, help="how long each job takes")
    args = parse_args(parser)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.set_event_loop(uvloop.new_event_loop())
    worker = build_worker(settings, backends={Backend.LOCAL: NoopBackend(args.job_ms / 1000)})
    if args.smoke:
        print("noop_worker: the worker builds; the dispatch benchmarks run it")
        return
    worker.run()


if __name__ == "__main__":
    main()
