"""The real thing: `relight-api` and `relight-worker` processes, a plain `requests` client."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from relight.core.config import Settings
from scripts.stack import BIN, free_port
from tests.api.test_seed_example import seed_example
from tests.conftest import ROOT, TenantKey
from tests.fakes.image_server import ImageServer

pytestmark = pytest.mark.slow


def _environment(settings: Settings, storage: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RELIGHT_ENVIRONMENT": "test",
        "RELIGHT_DATABASE_URL": settings.database_url,
        "RELIGHT_REDIS_URL": settings.redis_url,
        "RELIGHT_QUEUE_NAME": settings.queue_name + ":live",
        "RELIGHT_STORAGE_DIR": str(storage),
        "RELIGHT_SECRET_KEY": "live-test-secret",
        "RELIGHT_EGRESS_ALLOWLIST": settings.egress_allowlist,
        "RELIGHT_WORKER_POLL_DELAY_S": "0.01",
        "RELIGHT_SHUTDOWN_GRACE_S": "2",
        **extra,
    }


@pytest.fixture(scope="module")
def live_url(
    settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    env = _environment(settings, tmp_path_factory.mktemp("live-storage"))
    logs = tmp_path_factory.mktemp("live-logs")
    log_files = [(logs / "api.log").open("wb"), (logs / "worker.log").open("wb")]
    commands = [[str(BIN / "relight-api"), "--port", str(port)], [str(BIN / "relight-worker")]]
    processes = [
        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        for command, log in zip(commands, log_files, strict=True)
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"relight-api did not start; logs in {logs}")
            time.sleep(0.1)
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)
        for log in log_files:
            log.close()


def _post(url: str, key: str, body: dict[str, Any]) -> requests.Response:
    # Exactly how Segmind documents its client call.
    return requests.post(
        url, headers={"x-api-key": key, "Content-Type": "application/json"}, json=body, timeout=60
    )


async def test_seed_example_over_real_http(
    live_url: str, tenant: TenantKey, image_server: ImageServer
) -> None:
    body = seed_example(image_server.url("/chelsea.png"))

    response = await asyncio.to_thread(_post, f"{live_url}/v1/ic-light", tenant.key, body)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("WEBP", (768, 960))

    accepted = await asyncio.to_thread(_post, f"{live_url}/v2/ic-light", tenant.key, body)
    assert accepted.status_code == 202, accepted.text
    status_url = accepted.json()["status_url"]
    deadline = time.monotonic() + 30
    while True:
        status = (
            await asyncio.to_thread(requests.get, status_url, headers=tenant.headers, timeout=5)
        ).json()
        if status["status"] not in ("QUEUED", "PROCESSING") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert status["status"] == "COMPLETED"
    record = (
        await asyncio.to_thread(
            requests.get, accepted.json()["response_url"], headers=tenant.headers, timeout=5
        )
    ).json()
    [output] = record["outputs"]
    assert (output["width"], output["height"]) == (768, 960)


async def test_demo_script_writes_images(
    settings: Settings, migrated: None, clean_state: None, tmp_path: Path
) -> None:
    """What `make demo` runs after its set-up: it must end with images on disk."""
    out = tmp_path / "out"
    env = _environment(
        settings,
        tmp_path / "storage",
        RELIGHT_DEMO_OUT=str(out),
        RELIGHT_QUEUE_NAME=settings.queue_name + ":demo",
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    images = sorted(out.iterdir())
    assert len(images) == 3
    sizes = set()
    for path in images:
        with Image.open(path) as image:
            sizes.add(image.size)
    assert sizes == {(768, 960)}
    assert "COMPLETED" in done.stdout
