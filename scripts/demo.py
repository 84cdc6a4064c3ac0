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
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def admin(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(BIN / "relight-admin"), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"relight-admin {' '.join(args)} failed: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@contextmanager
def running(
    name: str, command: list[str], env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        say(f"started {name} (pid {process.pid}, log {log_path.relative_to(ROOT)})")
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            say(f"stopped {name}")


def wait_ready(client: httpx.Client, api: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"relight-api exited early (code {api.returncode}); see {LOGS}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("relight-api did not become ready within 30 s")


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
    port = free_port()
    env = {
        **os.environ,
        "RELIGHT_STORAGE_DIR": os.environ.get("RELIGHT_STORAGE_DIR", str(ROOT / "var" / "storage")),
        "RELIGHT_QUEUE_NAME": os.environ.get("RELIGHT_QUEUE_NAME", "relight:demo"),
        "RELIGHT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    tenant_name = "demo-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    tenant = admin(env, "tenant", "create", tenant_name, "--credits", "1000")
    key = admin(env, "key", "create", tenant_name, "--name", "demo")["key"]
    say(f"tenant {tenant['name']} with {tenant['credit_balance']} credits, key {key[:16]}…")
    with (
        running("api", [str(BIN / "relight-api"), "--port", str(port)], env) as api,
        running("worker", [str(BIN / "relight-worker")], env),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        wait_ready(client, api)
        records = [relight(client, key, spec) for spec in REQUESTS]
    for record in records:
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    say(f"done: {sum(len(r['outputs']) for r in records)} images in {OUT}")


if __name__ == "__main__":
    main()
