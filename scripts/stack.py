"""Starting and stopping a local api + worker pair, for the demo and the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(
    name: str, command: list[str], env: dict[str, str], log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in the background for the block's duration; its output goes to a log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(client: httpx.Client, api: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Block until the gateway's /readyz answers 200 (or fail if the process died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"relight-api exited early (code {api.returncode})")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"relight-api did not become ready within {timeout_s:g} s")


@contextmanager
def local_stack(env: dict[str, str], log_dir: Path) -> Iterator[httpx.Client]:
    """`relight-api` on a free port and one `relight-worker`; yields a client for the api."""
    port = free_port()
    env = {**env, "RELIGHT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    with (
        running("api", [str(BIN / "relight-api"), "--port", str(port)], env, log_dir) as api,
        running("worker", [str(BIN / "relight-worker")], env, log_dir),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
    ):
        wait_ready(client, api)
        yield client
