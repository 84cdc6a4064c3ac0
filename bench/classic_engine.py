"""Time the classic engine on one core: default-parameter relights of examples/chelsea.png.

Run as `.venv/bin/python bench/classic_engine.py [--runs N]`. Prints milliseconds per image
(p50, p90, mean) for the engine alone and for the engine plus the default WebP encode.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402  (argparse only: no thread pool starts)

# Thread pools read these when numpy is first imported, so they are set before that happens
# (the imports live in main for the same reason).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    position = fraction * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parse_args(parser, runs=1, warmup=0)

    pinned = "no"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        pinned = f"core {min(os.sched_getaffinity(0))}"

    from PIL import Image

    from inference.engines.classic import ClassicEngine
    from relight.core.images import encode_image
    from relight.core.params import RelightParams

    with Image.open(ROOT / "examples" / "chelsea.png") as opened:
        subject = opened.convert("RGB")
    params = RelightParams(prompt="a cat, sunset")
    engine = ClassicEngine()

    engine_ms: list[float] = []
    total_ms: list[float] = []
    size = (0, 0)
    encoded = 0
    for run in range(args.warmup + args.runs):
        start = time.perf_counter()
        image = engine.relight(subject, params, run)[0]
        middle = time.perf_counter()
        data = encode_image(image, params.output_format, params.output_quality)
        end = time.perf_counter()
        if run >= args.warmup:
            engine_ms.append((middle - start) * 1000)
            total_ms.append((end - start) * 1000)
        size, encoded = image.size, len(data)

    print(
        f"classic engine, {subject.size[0]}x{subject.size[1]} input -> "
        f"{params.width}x{params.height} crop -> {size[0]}x{size[1]} output, "
        f"{args.runs} runs, pinned: {pinned}"
    )
    print(f"{'ms per image':<24}{'p50':>8}{'p90':>8}{'mean':>8}")
    for label, samples in (("engine", engine_ms), ("engine + webp q80", total_ms)):
        p50, p90 = _percentile(samples, 0.5), _percentile(samples, 0.9)
        mean = sum(samples) / len(samples)
        print(f"{label:<24}{p50:>8.1f}{p90:>8.1f}{mean:>8.1f}")
    print(f"webp size: {encoded} bytes")


if __name__ == "__main__":
    main()
