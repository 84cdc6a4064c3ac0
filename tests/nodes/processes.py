"""Real `relight-node` processes for tests (classic engine, or IC-Light on a tiny model):
started, awaited, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis.asyncio import Redis

from scripts.stack import BIN, free_port


@dataclass
class NodeProcess:
    node_id: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL: the node dies as a crash would, mid-request, without a word."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def health(self) -> dict[str, object]:
        answer: dict[str, object] = httpx.get(f"{self.url}/healthz", timeout=2).json()
        return answer


def wait_until_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    """Until the node at `url` answers /healthz; raises (with its log) if it exits or does not
    start within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"relight-node exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"relight-node did not start: {log.read_text()}")
        time.sleep(0.1)


@contextmanager
def node_process(
    node_id: str,
    *,
    redis_url: str,
    namespace: str,
    log_dir: Path,
    capacity: int = 1,
    token: str | None = None,
    heartbeat_s: float = 0.5,
    model_dir: Path | None = None,
    startup_timeout_s: float = 30,
    extra_env: dict[str, str] | None = None,
) -> Iterator[NodeProcess]:
    """`relight-node` on a free port until the block ends: the classic engine, or IC-Light
    loaded from `model_dir` when one is given."""
    port = free_port()
    env = {
        **os.environ,
        "RELIGHT_NODE_ENGINE": "classic" if model_dir is None else "iclight",
        "RELIGHT_NODE_MODEL_DIR": str(model_dir or ""),
        "RELIGHT_NODE_DEVICE": "cpu",
        "RELIGHT_NODE_ID": node_id,
        "RELIGHT_NODE_CAPACITY": str(capacity),
        "RELIGHT_NODE_HEARTBEAT_S": str(heartbeat_s),
        "RELIGHT_REDIS_URL": redis_url,
        "RELIGHT_GPU_NAMESPACE": namespace,
        "RELIGHT_NODE_TOKEN": token or "",
        "RELIGHT_LOG_FORMAT": "text",
        **(extra_env or {}),
    }
    env.pop("RELIGHT_NODE_REDIS_URL", None)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{node_id}.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / "relight-node"), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_healthy(url, process, log, startup_timeout_s)
            yield NodeProcess(node_id=node_id, url=url, process=process, log=log)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def clear_slots(redis: Redis, namespace: str) -> None:
    """Forget every node slot held in `namespace` (between tests that share a node)."""
    keys = [key async for key in redis.scan_iter(match=f"{namespace}:slots*")]
    if keys:
        await redis.delete(*keys)
