"""`/docs` and `/redoc` render in a real browser (headless Debian Chromium) from a live
`relight-api` with no network beyond loopback: their assets come from this process, not a CDN.
`make test` installs Chromium when it is missing (`make chromium`)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api.app import create_app
from relight.core.config import Settings
from scripts.stack import BIN, free_port, running, wait_ready
from tests.e2e.test_live_stack import _environment

pytestmark = pytest.mark.slow

# Headless, and nothing but the page: no sync, updates, first-run or GPU, a fresh profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
# Virtual time: the page's scripts, its fetch of /openapi.json and the rendering all run
# before the DOM or the screenshot is taken.
RENDER_BUDGET_MS = 15_000


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is not installed: `make test` installs it (make chromium)"
    return found


@pytest.fixture(scope="module")
def api_url(
    settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    env = _environment(settings, tmp_path_factory.mktemp("docs-storage"))
    command = [str(BIN / "relight-api"), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with (
        running("api", command, env, tmp_path_factory.mktemp("docs-logs")) as api,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        wait_ready(client, api)
        yield url


def render(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={RENDER_BUDGET_MS}",
            "--window-size=1280,900",
            *mode,
            url,
        ],
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(profile)},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


def test_docs_list_every_operation_with_the_authorize_button(
    api_url: str, settings: Settings, tmp_path: Path
) -> None:
    page = httpx.get(f"{api_url}/docs", timeout=10).text
    # Every script and style the page loads is this server's own.
    assert not re.search(r"""(src|href)=["']?https?://""", page), page
    assert "/docs/assets/swagger-ui-bundle.js" in page

    done = render(f"{api_url}/docs", tmp_path / "dom", "--dump-dom")
    dom = done.stdout.decode()
    assert "Failed to load API definition" not in dom
    assert "Unable to render this definition" not in dom
    listed = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    spec_paths = set(create_app(settings).openapi()["paths"])
    assert listed == spec_paths
    assert re.search(r'class="btn authorize[^"]*"', dom), "no Authorize button"


def test_docs_page_is_not_blank(api_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "docs.png"
    render(f"{api_url}/docs", tmp_path / "shot", f"--screenshot={shot}")
    with Image.open(io.BytesIO(shot.read_bytes())) as image:
        pixels = image.convert("L").resize((320, 225))
        histogram = pixels.histogram()
    total = sum(histogram)
    # Text, buttons and coloured operation rows: a good share of the page is not background.
    not_white = total - sum(histogram[245:])
    assert not_white / total > 0.05, f"only {not_white} of {total} pixels are not white"
    assert sum(1 for count in histogram if count) > 20, "hardly any shades: a blank page"


def test_redoc_renders_the_operations(api_url: str, tmp_path: Path) -> None:
    page = httpx.get(f"{api_url}/redoc", timeout=10).text
    assert not re.search(r"""(src|href)=["']?https?://""", page), page

    done = render(f"{api_url}/redoc", tmp_path / "redoc", "--dump-dom")
    dom = done.stdout.decode()
    for operation_id in ("submit_relight", "get_request", "list_requests", "cancel_request"):
        assert f'data-section-id="operation/{operation_id}"' in dom, operation_id
