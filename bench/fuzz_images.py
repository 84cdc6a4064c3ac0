"""Coverage-guided fuzzing of the hand-written image code: the metadata stripper
(`relight/core/image_metadata.py`), the structure check (`relight/core/image_structure.py`) and the
worker's decode (`relight.core.images.decode_image`), for a bounded time per target.

Run as `.venv/bin/python bench/fuzz_images.py [--seconds 60] [--targets strip_metadata ...]`.
Each target runs in a process of its own under atheris (libFuzzer driving Python with
coverage feedback from `relight` and Pillow's Python plugins), from a seed corpus of small
JPEG (baseline, progressive, CMYK, restart markers, EXIF, ICC), PNG (8- and 16-bit, palette,
interlaced, tEXt/zTXt/iTXt/eXIf, ICC) and WebP (lossy, lossless, EXIF/XMP, ICC) files made
with Pillow, plus the corpus earlier runs grew (`var/fuzz/<target>/corpus`). What is checked
is `bench/fuzz_targets.py`. Every input that breaks a check is written to
`tests/images/fuzz_corpus/<target>/` (one per distinct failure, shrunk), where
`tests/images/test_fuzz_regressions.py` replays it; a hang (`--timeout`) or running out of memory
(`--rss-limit-mb`) is kept there too. Prints a markdown table: target, executions, seconds,
exec/s, crashes.

atheris ships binary wheels for CPython on Linux x86_64 (the dev extra installs it there);
elsewhere it needs clang with libFuzzer to build, and this script says so and stops.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402

# The keys of `bench.fuzz_targets.TARGETS`, named here because that module (and `relight`)
# must first be imported in the fuzzed process, under instrumentation.
TARGET_NAMES = ["strip_metadata", "verify_structure", "decode_image"]
CRASH_LINE = re.compile(r"^CRASH (\S+) (.*)$")
# Where libFuzzer wrote the input it stopped on (a hang, too much memory, a native crash).
ARTIFACT_LINE = re.compile(r"Test unit written to (\S+)")
SHRINK_SECONDS = 3.0


# --- seed corpus -----------------------------------------------------------------------------
# Pillow is imported inside functions: the fuzzed process imports it under atheris's
# instrumentation, which only covers modules imported after it starts.


def _exif(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "SeedCam"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 0.0)}
    return exif.tobytes()


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def seed_images() -> dict[str, bytes]:
    """Small valid files of every kind the API takes, with the metadata the stripper drops."""
    from PIL import Image, ImageCms, PngImagePlugin

    rgb = Image.new("RGB", (19, 13), (200, 40, 10))
    for x in range(19):
        rgb.putpixel((x, x % 13), (0, 90, 250))
    rgba = rgb.convert("RGBA")
    rgba.putpixel((0, 0), (1, 2, 3, 0))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "seed")
    text.add_text("Author", "seed", zip=True)
    text.add_itxt("Title", "seed", lang="en")
    palette = rgb.quantize(8)
    palette.info["transparency"] = 0
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return {
        "baseline.jpg": _encode(rgb, "JPEG", quality=50),
        "exif_comment.jpg": _encode(rgb, "JPEG", exif=_exif(6), comment=b"seed", quality=50),
        "progressive.jpg": _encode(rgb, "JPEG", progressive=True, quality=50),
        "grey_subsampled.jpg": _encode(rgb.convert("L"), "JPEG", quality=30),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG", quality=30),
        "restarts_icc.jpg": _encode(rgb, "JPEG", restart_marker_blocks=1, icc_profile=icc),
        "rgb.png": _encode(rgb, "PNG"),
        "icc_transparent_colour.png": _encode(rgb, "PNG", icc_profile=icc, transparency=(1, 2, 3)),
        "rgba_text_exif.png": _encode(rgba, "PNG", pnginfo=text, exif=_exif(8)),
        "grey16.png": _encode(rgb.convert("L").convert("I;16"), "PNG"),
        "rgb16_text.png": _rgb16_png(),
        "palette.png": _encode(palette, "PNG", transparency=0),
        "one_bit_interlaced.png": _encode(rgb.convert("1"), "PNG", interlace=1),
        "lossy.webp": _encode(rgb, "WEBP", quality=30),
        "lossless_alpha.webp": _encode(rgba, "WEBP", lossless=True),
        "icc.webp": _encode(rgb, "WEBP", icc_profile=icc, quality=30),
        "exif_xmp.webp": _encode(rgb, "WEBP", exif=_exif(3), xmp=b"<x:xmpmeta/>", quality=30),
    }


def _rgb16_png() -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one from a mode; the chunks are built here)."""
    import struct
    import zlib

    width, height = 7, 5
    rows = b"".join(
        b"\x00" + b"".join(struct.pack(">HHH", x * 9000, y * 12000, 40000) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", b"Comment\x00seed")
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# --- the fuzzed process ----------------------------------------------------------------------


def failure_signature(error: BaseException) -> str:
    """Which bug an exception is: its type and the innermost line it was raised at."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__}@{Path(frame.filename).name}:{frame.lineno}"


def failure_of(check: Callable[[bytes], None], data: bytes) -> str | None:
    try:
        check(data)
    except Exception as error:
        return failure_signature(error)
    return None


def shrink(check: Callable[[bytes], None], data: bytes, signature: str) -> bytes:
    """A shorter input that fails the same way (cuts ever smaller pieces out, for a few
    seconds), so what is kept in tests/ stays small and readable."""
    deadline = time.monotonic() + SHRINK_SECONDS
    piece = max(1, len(data) // 2)
    while piece >= 1 and time.monotonic() < deadline:
        start = 0
        while start < len(data) and time.monotonic() < deadline:
            candidate = data[:start] + data[start + piece :]
            if failure_of(check, candidate) == signature:
                data = candidate
            else:
                start += piece
        piece //= 2
    return data


def run_child(
    target: str, corpus: Path, seeds: Path, crashes: Path, args: argparse.Namespace
) -> None:
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed (pip install atheris; Linux x86_64 has wheels)")
    with atheris.instrument_imports(include=["relight", "PIL", "bench.fuzz_targets"]):
        from PIL import (
            Image,
            JpegImagePlugin,
            PngImagePlugin,
            TiffImagePlugin,
            WebPImagePlugin,
        )

        from bench.fuzz_targets import TARGETS

        del Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin
    check = TARGETS[target]
    # Failures already kept (fixed or not) are not written again.
    known = {failure_of(check, path.read_bytes()) for path in crashes.glob("*.bin")}

    def one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception as error:
            signature = failure_signature(error)
            if signature in known:
                return
            known.add(signature)
            small = shrink(check, data, signature)
            path = crashes / f"{hashlib.sha1(small).hexdigest()[:16]}.bin"
            path.write_bytes(small)
            print(f"CRASH {signature} {path}", flush=True)
            traceback.print_exception(error, file=sys.stderr)

    atheris.Setup(
        [
            sys.argv[0],
            str(corpus),
            str(seeds),
            f"-max_total_time={args.seconds}",
            f"-timeout={args.timeout}",
            f"-rss_limit_mb={args.rss_limit_mb}",
            f"-max_len={args.max_len}",
            f"-artifact_prefix={crashes}/",
            "-print_final_stats=1",
        ],
        one_input,
    )
    atheris.Fuzz()


# --- the driver ------------------------------------------------------------------------------


def fuzz_target(target: str, args: argparse.Namespace) -> tuple[int, float, list[str]]:
    """Fuzz one target for `args.seconds` (a fresh process after a hang or a crash that
    libFuzzer stops on); executions, seconds and the failures found."""
    work = args.work_dir / target
    corpus, seeds, crashes = work / "corpus", work / "seeds", args.crash_dir / target
    for folder in (corpus, seeds, crashes):
        folder.mkdir(parents=True, exist_ok=True)
    for name, data in seed_images().items():
        (seeds / name).write_bytes(data)
    executions, found, seen_artifacts = 0, [], set()
    started = time.monotonic()
    while (left := args.seconds - (time.monotonic() - started)) >= 1:
        completed = subprocess.run(
            [
                *(sys.executable, __file__, "--child", target, "--seconds", str(int(left))),
                *("--timeout", str(args.timeout), "--rss-limit-mb", str(args.rss_limit_mb)),
                *("--max-len", str(args.max_len)),
                *("--work-dir", str(args.work_dir), "--crash-dir", str(args.crash_dir)),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=left + 60 + 2 * args.timeout,
        )
        (work / "last.log").write_text(completed.stdout + completed.stderr)
        runs = re.findall(r"stat::number_of_executed_units: (\d+)", completed.stderr)
        executions += int(runs[-1]) if runs else 0
        found += [
            m.group(1) for line in completed.stdout.splitlines() if (m := CRASH_LINE.match(line))
        ]
        if completed.returncode == 0:
            break
        # libFuzzer stopped on a hang, a memory blow-up or a crash it caught itself.
        artifact = ARTIFACT_LINE.search(completed.stderr)
        if artifact is None:
            raise RuntimeError(f"the {target} fuzzer failed:\n{completed.stderr[-3000:]}")
        name = Path(artifact.group(1)).name
        if name in seen_artifacts:
            break  # an input of the corpus itself: a fresh process would meet it again
        seen_artifacts.add(name)
        found.append(f"{name.split('-')[0]} ({name})")
    return executions, time.monotonic() - started, found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--targets", nargs="+", choices=TARGET_NAMES, default=TARGET_NAMES)
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--max-len", type=int, default=16384, help="bytes of the largest input")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "fuzz")
    parser.add_argument("--crash-dir", type=Path, default=ROOT / "tests" / "images" / "fuzz_corpus")
    parser.add_argument("--child", choices=TARGET_NAMES, help=argparse.SUPPRESS)
    args = parse_args(parser, seconds=2)  # the least that fuzzes at all (runs last >= 1 s)
    if args.child:
        work = args.work_dir / args.child
        run_child(args.child, work / "corpus", work / "seeds", args.crash_dir / args.child, args)
        return
    print("| target | executions | seconds | exec/s | crashes |")
    print("|---|---:|---:|---:|---|")
    for target in args.targets:
        executions, seconds, found = fuzz_target(target, args)
        crashes = f"{len(found)}: {', '.join(found)}" if found else "0"
        print(
            f"| {target} | {executions} | {seconds:.0f} | {executions / seconds:.0f} | {crashes} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
