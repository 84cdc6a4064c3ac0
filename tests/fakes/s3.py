"""A real S3-compatible HTTP server on 127.0.0.1 for the tests: moto's `moto_server`.

It speaks S3's REST API (buckets, objects, presigned GETs) over HTTP, so obstore talks to it
as it would to AWS or MinIO; the test credentials go through the standard AWS variables.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from scripts.stack import BIN, free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "relight-test",
    "AWS_SECRET_ACCESS_KEY": "relight-test-secret",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def create_bucket(self, name: str) -> None:
        response = httpx.put(f"{self.endpoint_url}/{name}", timeout=5)
        assert response.status_code == 200, response.text

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in `bucket` under `prefix` (a ListObjectsV2 call, read with httpx)."""
        response = httpx.get(
            f"{self.endpoint_url}/{bucket}", params={"list-type": "2", "prefix": prefix}
        )
        assert response.status_code == 200, response.text
        return [
            part.split("</Key>")[0] for part in response.text.split("<Key>")[1:] if "</Key>" in part
        ]


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """`moto_server` on a free port until the block ends, with the test credentials set."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    with (log_dir / "moto.log").open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"moto_server exited: {(log_dir / 'moto.log').read_text()}")
                try:
                    httpx.get(f"{endpoint}/", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield S3Server(endpoint_url=endpoint)
        finally:
            process.terminate()
            process.wait(timeout=10)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
