"""`bench/fuzz_images.py` runs each target for a moment under atheris and prints its table,
writing nothing into the repository (its work and crash folders are the test's)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    # The dev extra installs atheris where it has wheels (Linux x86_64); there a missing
    # atheris is a failure, not a skip.
    pytest.mark.skipif(
        sys.platform != "linux" or platform.machine() != "x86_64",
        reason="atheris has wheels for Linux x86_64 only (elsewhere it needs clang)",
    ),
]


def test_the_fuzz_benchmark_runs_every_target_and_prints_executions(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "fuzz_images.py"), "--seconds", "2"),
            *("--work-dir", str(tmp_path / "work"), "--crash-dir", str(tmp_path / "crashes")),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in completed.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| target")
    ]
    assert [row[0] for row in rows] == ["strip_metadata", "verify_structure", "decode_image"]
    assert all(int(row[1]) > 0 for row in rows), completed.stdout
