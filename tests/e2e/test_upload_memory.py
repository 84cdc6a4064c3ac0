"""Tiny uploads no longer cost the API gigabytes (issue 15, item 2, must show 2).

A real `relight-api` process takes 4 × the 631-byte JPEG that declares 6000x6600 and 4 × the
311 KB 16-bit RGBA PNG of 39.99 Mpx, all at once: its peak RSS (`VmHWM` in /proc) grows by
less than 300 MB (it checks structure and never decodes), the JPEG is refused as truncated,
and the PNG jobs complete on a real `relight-worker` (which decodes them reduced).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from relight.core.config import Settings
from scripts.stack import BIN, free_port
from tests.conftest import TenantKey
from tests.e2e.test_live_stack import _environment
from tests.helpers import FAST, png_bytes
from tests.images.test_image_structure import forty_megapixel_png, truncated_6000x6600_jpeg

pytestmark = pytest.mark.slow


def memory_kb(pid: int, field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


async def wait_until_ready(client: httpx.AsyncClient) -> None:
    for _ in range(300):
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("relight-api did not become ready")


async def test_hostile_uploads_leave_the_api_small_and_the_real_ones_complete(
    settings: Settings, tenant: TenantKey, tmp_path: Path
) -> None:
    env = _environment(
        settings,
        tmp_path / "storage",
        RELIGHT_QUEUE_NAME=settings.queue_name + ":memory",
        RELIGHT_MAX_INPUT_PIXELS="40000000",
        RELIGHT_MAX_INPUT_BYTES=str(20 * 1024 * 1024),
        RELIGHT_WORKER_CONCURRENCY="2",
    )
    logs = [(tmp_path / "api.log").open("wb"), (tmp_path / "worker.log").open("wb")]
    port = free_port()
    api = await asyncio.create_subprocess_exec(
        str(BIN / "relight-api"), "--port", str(port), env=env, stdout=logs[0], stderr=logs[0]
    )
    worker = await asyncio.create_subprocess_exec(
        str(BIN / "relight-worker"), env=env, stdout=logs[1], stderr=logs[1]
    )
    jpeg = base64.b64encode(truncated_6000x6600_jpeg()).decode()
    png = base64.b64encode(forty_megapixel_png()).decode()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await wait_until_ready(client)

            async def submit(image: str) -> httpx.Response:
                body: dict[str, Any] = {"prompt": "cat", "subject_image": image, **FAST}
                return await client.post("/v2/ic-light", headers=tenant.headers, json=body)

            # A first submit warms the process up (imports, pools), so it is not counted.
            warm = await submit(base64.b64encode(png_bytes()).decode())
            assert warm.status_code == 202, warm.text
            peak_before = memory_kb(api.pid, "VmHWM")

            answers = await asyncio.gather(
                *[submit(jpeg) for _ in range(4)], *[submit(png) for _ in range(4)]
            )

            grown_mb = (memory_kb(api.pid, "VmHWM") - peak_before) / 1024
            assert grown_mb < 300, f"the api's peak RSS grew by {grown_mb:.0f} MB"
            for refused in answers[:4]:
                assert refused.status_code == 400, refused.text
                assert refused.json()["code"] == "invalid_image"
                assert "truncated" in refused.json()["error"]
            request_ids = []
            for accepted in answers[4:]:
                assert accepted.status_code == 202, accepted.text
                request_ids.append(accepted.json()["request_id"])

            for request_id in request_ids:
                status = None
                for _ in range(1200):
                    response = await client.get(
                        f"/v2/requests/{request_id}/status", headers=tenant.headers
                    )
                    status = response.json()["status"]
                    if status in ("COMPLETED", "FAILED", "CANCELED"):
                        break
                    await asyncio.sleep(0.1)
                assert status == "COMPLETED", (status, response.json())
    finally:
        for process in (api, worker):
            if process.returncode is None:
                process.terminate()
        for process in (api, worker):
            await asyncio.wait_for(process.wait(), 20)
        for log in logs:
            log.close()
