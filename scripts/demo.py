"""`make demo`: relight the bundled samples through the real API, queue and worker.

Starts `relight-api` and `relight-worker` as processes, creates a demo tenant with a key,
submits two requests over HTTP with `POST /v2/ic-light`, polls them to the end, writes the
images to ./out/ and prints each request's record. Stops what it started, whatever happens.
Postgres and Redis must answer and the schema must be migrated (the Makefile sees to both).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.stack import BIN, local_stack  # noqa: E402  (needs the path above)

OUT = Path(os.environ.get("RELIGHT_DEMO_OUT", ROOT / "out"))
LOGS = ROOT / "var" / "demo"

REQUESTS: list[dict[str, Any]] = [
    {
        "sample": "chelsea.png",
        "prompt": "a cat, warm sunset light, photoshoot, 4k",
        "light_source": "Left Light",
        "number_of_images": 2,
        "seed": 42,
    },
    {
        "sample": "astronaut.png",
        "prompt": "portrait, cool moonlight, night",
        "light_source": "Right Light",
        "seed": 7,
        "output_format": "png",
    },
]


def say(message: str) -> None:
    sys.stdout.write(f"[demo] {message}\n")
    sys.stdout.flush()


def admin(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(BIN / "relight-admin"), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"relight-admin {' '.join(args)} failed: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def relight(client: httpx.Client, key: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in spec.items() if k != "sample"}
    image = base64.b64encode((ROOT / "examples" / spec["sample"]).read_bytes()).decode()
    body["subject_image"] = image
    started = time.perf_counter()
    response = client.post("/v2/ic-light", headers={"x-api-key": key}, json=body)
    if response.status_code != 202:
        raise SystemExit(f"submit failed: {response.status_code} {response.text}")
    accepted = response.json()
    say(f"submitted {spec['sample']}: request {accepted['request_id']} is {accepted['status']}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.get(accepted["status_url"], headers={"x-api-key": key}).json()
        if status["status"] in ("COMPLETED", "FAILED", "CANCELED"):
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"request {accepted['request_id']} did not finish within 120 s")
    record: dict[str, Any] = client.get(accepted["response_url"], headers={"x-api-key": key}).json()
    say(f"{record['status']} in {time.perf_counter() - started:.2f} s (submit to completion)")
    if record["status"] != "COMPLETED":
        raise SystemExit(f"request failed: {record['error']}")
    OUT.mkdir(parents=True, exist_ok=True)
    for output in record["outputs"]:
        # The signed URL needs no API key: this is what a webhook receiver would download.
        data = client.get(output["url"]).content
        extension = output["content_type"].split("/")[-1].replace("jpeg", "jpg")
        path = (
            OUT
            / f"{Path(spec['sample']).stem}-{record['request_id']}-{output['index']}.{extension}"
        )
        path.write_bytes(data)
        say(f"wrote {path} ({output['width']}x{output['height']}, {len(data)} bytes)")
    return record


def main() -> None:
    env = {
        **os.environ,
        "RELIGHT_STORAGE_DIR": os.environ.get("RELIGHT_STORAGE_DIR", str(ROOT / "var" / "storage")),
        "RELIGHT_QUEUE_NAME": os.environ.get("RELIGHT_QUEUE_NAME", "relight:demo"),
    }
    tenant_name = "demo-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    tenant = admin(env, "tenant", "create", tenant_name, "--credits", "1000")
    key = admin(env, "key", "create", tenant_name, "--name", "demo")["key"]
    say(f"tenant {tenant['name']} with {tenant['credit_balance']} credits, key {key[:16]}…")
    say(f"starting relight-api and relight-worker (logs in {LOGS.relative_to(ROOT)})")
    with local_stack(env, LOGS) as client:
        records = [relight(client, key, spec) for spec in REQUESTS]
    say("stopped relight-api and relight-worker")
    for record in records:
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    say(f"done: {sum(len(r['outputs']) for r in records)} images in {OUT}")


if __name__ == "__main__":
    main()
