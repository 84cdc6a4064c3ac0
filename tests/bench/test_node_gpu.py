"""bench/node_gpu.py end to end on the CPU with the tiny model: it runs our engine and the
conformance test's re-implementation of the reference demo, and their fp32 outputs are equal."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "node_gpu.py"


def _bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("light_source", "images"), [("None", "1"), ("Left Light", "2")], ids=["txt2img", "img2img"]
)
def test_tiny_cpu_run_times_both_and_matches_the_plain_pipelines(
    light_source: str, images: str
) -> None:
    out = _bench(
        "--tiny",
        "--device",
        "cpu",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--width",
        "256",
        "--height",
        "320",
        "--steps",
        "3",
        "--light-source",
        light_source,
        "--number-of-images",
        images,
    )
    assert re.search(r"^ours\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE), out
    assert re.search(r"^plain\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE), out
    assert re.search(r"speed-up \(plain / ours\): [\d.]+x", out), out
    found = re.search(
        r"ours fp32 vs reference fp32, same seed: max abs pixel difference (\d+)", out
    )
    assert found is not None, out
    # Same seed, fp32, same threads: the reference demo's pixels exactly.
    assert int(found.group(1)) == 0


@pytest.mark.slow  # a Python process of its own, seconds of imports
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the bench runs for real")
def test_without_cuda_it_says_it_did_not_run() -> None:
    out = _bench()
    assert "not run: CUDA is not available" in out
