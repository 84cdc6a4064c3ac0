"""bench/scale.py end to end with a few jobs: both stores, every column filled."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_bench_measures_the_filesystem_and_the_s3_store() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--jobs", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for store in ("filesystem", "s3"):
        row = re.search(rf"^\| {store} \|(?P<cells>.*)\|$", done.stdout, re.M)
        assert row is not None, done.stdout
        cells = [cell.strip() for cell in row["cells"].split("|")]
        assert len(cells) == 5
        assert all(re.fullmatch(r"[\d.]+", cell) for cell in cells), cells
        assert float(cells[0]) >= 1  # a submit writes to Postgres
