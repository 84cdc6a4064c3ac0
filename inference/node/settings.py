"""Node settings: `RELIGHT_NODE_*` environment variables (a few shared with the rest of
Relight: the Redis URL, the discovery namespace, the log settings)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.node.admission import DEFAULT_LATENT_BUDGET


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RELIGHT_NODE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # `iclight` (IC-Light fc on diffusers, needs MODEL_DIR) or `classic` (the CPU engine).
    engine: Literal["iclight", "classic"] = "iclight"
    model_dir: Path | None = None
    # Optional matting model for subjects without an alpha channel (IC-Light engine).
    matting_model: Path | None = None
    # Hash every file of the model folder against its manifest at start-up (slow for 5 GB;
    # without it the start checks sizes and structure, and `relight-models check` hashes).
    verify_hashes: bool = False
    # torch device (`cuda`, `cuda:1`, `cpu`); unset = CUDA when present.
    device: str | None = None
    # Requests rendered at once; more are refused with 503 and Retry-After.
    capacity: int = Field(default=1, ge=1, le=64)
    # Images that may share one denoising pass (UNet batch) across concurrent requests of the
    # same shape; 1 turns batching off. Needs a capacity above 1 to have company.
    max_batch: int = Field(default=8, ge=1, le=64)
    # How long a request waits for batch-mates (only while other requests are rendering).
    batch_window_ms: float = Field(default=20.0, ge=0, le=5000)
    # Node-wide memory budget in UNet rows × latent pixels (inference/node/admission.py; the
    # default suits one 80 GB GPU); requests wait for room, one alone over it is refused (507).
    latent_budget: int = Field(default=DEFAULT_LATENT_BUDGET, ge=1)
    # Same seed, same pixels on this node: cuDNN autotuning off, deterministic kernels (slower).
    # Off by default. Either way a CPU node and a GPU node give other images for one seed.
    deterministic: bool = False
    # One tiny render per loaded model before the node announces itself (its first heartbeat),
    # so no request pays the lazy initialisation; a failing warm-up stops the node.
    warm_up: bool = True
    # Name in discovery and in job records; unset = host name and port.
    id: str | None = None
    # URL workers use to reach this node; unset = http://<host name>:<port>.
    public_url: str | None = None
    heartbeat_s: float = Field(default=5.0, gt=0)
    # RELIGHT_NODE_REDIS_URL, else RELIGHT_REDIS_URL; empty = no heartbeat (static nodes).
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("RELIGHT_NODE_REDIS_URL", "RELIGHT_REDIS_URL"),
    )
    namespace: str = Field(
        default="relight:gpu", validation_alias=AliasChoices("RELIGHT_GPU_NAMESPACE")
    )
    # Bearer token workers must send (the same variable workers read); unset = open.
    token: str | None = Field(default=None, min_length=16)
    max_input_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_input_pixels: int = Field(default=40_000_000, ge=1024)
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("RELIGHT_LOG_LEVEL"))
    log_format: Literal["json", "text"] = Field(
        default="json", validation_alias=AliasChoices("RELIGHT_LOG_FORMAT")
    )

    @field_validator("token", "id", "public_url", "model_dir", "matting_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def node_id(self, port: int) -> str:
        return self.id or f"{socket.gethostname()}:{port}"

    def url(self, host: str, port: int) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        reachable = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        return f"http://{reachable}:{port}"

    @property
    def heartbeat_ttl_s(self) -> float:
        """A node missing three beats in a row is gone."""
        return self.heartbeat_s * 3
