"""`relight run IMAGE --prompt … --out DIR`, the installed console script, against the stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from relight_client.cli import render_progress
from relight_client.models import RequestStatus, Status

from tests.client.conftest import Account
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow

RELIGHT = Path(sys.executable).parent / "relight"
FAST_PARAMS = [
    *("--param", "width=256", "--param", "height=256", "--param", "highres_scale=1"),
    *("--param", "steps=10", "--param", "output_format=png", "--param", "light_source=Left Light"),
]


def relight(*arguments: str, base_url: str, key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELIGHT_BASE_URL": base_url, "RELIGHT_API_KEY": key}
    return subprocess.run(
        [str(RELIGHT), *arguments], env=env, capture_output=True, text=True, timeout=120
    )


def test_run_saves_the_image_and_draws_progress(
    base_url: str, account: Account, tmp_path: Path
) -> None:
    subject = tmp_path / "cat.png"
    subject.write_bytes(png_bytes())

    done = relight(
        "run", str(subject), "--prompt", "cat, sunset", "--out", str(tmp_path / "out"),
        *FAST_PARAMS, base_url=base_url, key=account.key,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    with Image.open(line) as image:
        assert (image.format, image.size) == ("PNG", (256, 256))
    assert done.stderr.startswith("request ")
    assert f"[{'#' * 30}] 100% COMPLETED" in done.stderr


def test_a_bad_key_exits_2_with_the_servers_error(base_url: str, tmp_path: Path) -> None:
    subject = tmp_path / "cat.png"
    subject.write_bytes(png_bytes())

    done = relight("run", str(subject), "--prompt", "cat", base_url=base_url, key="rl_x_y")

    assert done.returncode == 2
    assert "401 unauthorized" in done.stderr


def test_the_progress_bar_shows_the_fraction_and_the_queue() -> None:
    queued = RequestStatus(request_id="r", status=Status.QUEUED, queue_position=3)
    halfway = RequestStatus(request_id="r", status=Status.PROCESSING, progress=0.5)

    assert render_progress(queued) == f"[{'.' * 30}]   0% QUEUED (position 3 in queue)"
    assert render_progress(halfway) == f"[{'#' * 15}{'.' * 15}]  50% PROCESSING"
