"""bench/gpu_suite.sh: without CUDA it says it did not run; `--cpu-smoke` runs every step on the
tiny model on the CPU and prints the table with every row (the figures are not checked, only
that each is there; `make bench-smoke` runs the shorter `--smoke`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_suite.sh"
ROWS = [
    "model folder",
    "ours: s/image",
    "ours+graphs: s/image",
    "reference demo: s/image",
    "speed-up (reference / ours)",
    "peak GPU memory, ours",
    "pixel diff ours fp32 vs reference fp32 (max, mean)",
    "pixel diff ours fp16 vs reference fp32 (max, mean)",
    "pixel diff ours fp16 (optimisations off) vs reference fp16 (max, mean)",
    "batching, 1 concurrent: images/s off, on, on/off",
    "batching, 2 concurrent: images/s off, on, on/off",
    "batching, 4 concurrent: images/s off, on, on/off",
    "batching, 8 concurrent: images/s off, on, on/off",
    "matting: s/subject",
    "step model",
    "step node_gpu",
    "step node_batching",
    "step matting",
]


def run_suite(*args: str, timeout: float) -> str:
    completed = subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the suite runs for real")
def test_without_cuda_it_says_it_did_not_run() -> None:
    assert "gpu_suite not run: CUDA is not available" in run_suite(timeout=120)


@pytest.mark.slow
def test_cpu_smoke_prints_every_row() -> None:
    output = run_suite("--cpu-smoke", timeout=1000)
    rows = {
        cells[0]: cells[1]
        for line in output.splitlines()
        if line.startswith("| ")
        and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 2
    }
    assert [label for label in rows if label != "measurement"] == ROWS, output
    broken = {
        label: value
        for label, value in rows.items()
        if value.startswith(("failed", "timed out", "missing"))
    }
    assert not broken, output
    for step in ("step model", "step node_gpu", "step node_batching"):
        assert rows[step] == "ok", output
    float(rows["ours: s/image"])
    float(rows["reference demo: s/image"])
    float(rows["matting: s/subject"])
