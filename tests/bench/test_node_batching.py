"""bench/node_batching.py end to end on the CPU with the tiny model (small, quick settings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_bench_prints_a_row_per_concurrency_with_batching_off_and_on() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "node_batching.py"),
            *("--width", "256", "--height", "320", "--steps", "2", "--highres-scale", "1"),
            *("--concurrency", "1,2", "--repeats", "1"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for level in (1, 2):
        assert re.search(rf"^\| {level} \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", done.stdout, re.M), (
            done.stdout
        )
    assert re.search(r"^lone request: [\d.]+ s off, [\d.]+ s on", done.stdout, re.M), done.stdout
