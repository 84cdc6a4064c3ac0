"""One node's throughput with concurrent requests, with and without dynamic batching.

Run as `.venv/bin/python bench/node_batching.py` (the tiny model on the CPU by default;
`--sd15 --device cuda` on a GPU: the full-size SD1.5 architecture with random weights). In one
run, on one engine build each, it fires 1, 2, 4 and 8 concurrent requests at Segmind's defaults
(512×640, 25 steps, highres 1.5, cfg 2; each its own seed and light source) at the engine, as a
node's request threads do, and reports images/s and the latency of each round, batching off
(`max_batch_images` 1: every request runs its own UNet passes, concurrently) and on (up to 8
images per pass, 20 ms window). The lone request's latency (1 concurrent, median of the
repeats) shows what batching costs a request that finds no company.

On the CPU the figures show overheads only: a CPU has no idle parallel units for a bigger batch
to fill, so the win a GPU gives (goal: at least 2× images/s at 4 concurrent requests, a lone
request within 10 % of today's) cannot show here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.cli import parse_args  # noqa: E402
from inference.engines.iclight import ICLightEngine  # noqa: E402
from relight.core.params import LightSource, RelightParams  # noqa: E402

LIGHTS = [LightSource.LEFT, LightSource.RIGHT, LightSource.TOP, LightSource.BOTTOM]


def _round(engine: ICLightEngine, subject: Image.Image, requests: list[RelightParams]) -> float:
    """Seconds until every request of the round, started together, has its images."""
    barrier = threading.Barrier(len(requests) + 1)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            engine.relight(subject, requests[index], 1000 + index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--sd15", action="store_true", help="full-size SD1.5, not the tiny model")
    parser.add_argument("--model-dir", type=Path, help="use this model folder instead")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--highres-scale", type=float, default=1.5)
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per level (median)")
    parser.add_argument("--max-batch", type=int, default=8, help="images per pass when on")
    parser.add_argument("--window-ms", type=float, default=20.0)
    args = parse_args(
        parser, width=256, height=320, steps=2, highres_scale=1, concurrency="1,2", repeats=1
    )
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("node_batching bench not run: CUDA is not available")
        return 0
    levels = [int(level) for level in args.concurrency.split(",")]

    with Image.open(ROOT / "examples" / "chelsea.png") as opened:
        subject = opened.convert("RGB")
    with tempfile.TemporaryDirectory(prefix="relight-batching-") as scratch:
        from inference.tiny_model import write_model, write_tiny_model

        if args.model_dir is not None:
            model_dir = args.model_dir
        elif args.sd15:
            from bench.node_gpu import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG

            model_dir = write_model(
                Path(scratch) / "sd15",
                unet_config=SD15_UNET_CONFIG,
                vae_config=SD15_VAE_CONFIG,
                text_config=SD15_TEXT_CONFIG,
                dtype=torch.float16,
            )
        else:
            model_dir = write_tiny_model(Path(scratch) / "tiny")
        kind = "SD1.5 (random weights)" if args.sd15 else "tiny model"
        if args.model_dir is not None:
            kind = str(args.model_dir)
        print(
            f"IC-Light fc, {kind}, {device}, torch threads {torch.get_num_threads()}: "
            f"{args.width}x{args.height}, {args.steps} steps, highres {args.highres_scale}, "
            f"cfg 2, 1 image per request; median of {args.repeats} rounds per level"
        )
        rows: dict[tuple[str, int], tuple[float, float]] = {}
        for label, max_batch in (("off", 1), ("on", args.max_batch)):
            engine = ICLightEngine.from_dir(
                model_dir,
                device=str(device),
                max_batch_images=max_batch,
                batch_window_s=args.window_ms / 1000,
            )
            warm = RelightParams(
                prompt="a cat", width=args.width, height=args.height, steps=2, highres_scale=1.0
            )
            _round(engine, subject, [warm])
            for level in levels:
                requests = [
                    RelightParams(
                        prompt="a cat, warm light",
                        width=args.width,
                        height=args.height,
                        steps=args.steps,
                        highres_scale=args.highres_scale,
                        light_source=LIGHTS[index % len(LIGHTS)],
                    )
                    for index in range(level)
                ]
                seconds = statistics.median(
                    _round(engine, subject, requests) for _ in range(args.repeats)
                )
                rows[(label, level)] = (level / seconds, seconds)
            del engine

        print(
            "| concurrent | off: images/s | on: images/s | on / off | off: round s | on: round s |"
        )
        print("|---|---|---|---|---|---|")
        for level in levels:
            off_rate, off_s = rows[("off", level)]
            on_rate, on_s = rows[("on", level)]
            print(
                f"| {level} | {off_rate:.2f} | {on_rate:.2f} | {on_rate / off_rate:.2f}x "
                f"| {off_s:.2f} | {on_s:.2f} |"
            )
        if 1 in levels:
            lone_off, lone_on = rows[("off", 1)][1], rows[("on", 1)][1]
            ratio = lone_on / lone_off
            print(f"lone request: {lone_off:.3f} s off, {lone_on:.3f} s on ({ratio:.2f}x)")
        if 4 in levels:
            gain = rows[("on", 4)][0] / rows[("off", 1)][0]
            print(f"images/s at 4 concurrent with batching vs one at a time: {gain:.2f}x (goal 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
