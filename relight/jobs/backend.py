"""What a backend is to the job runner: subject in, encoded images out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from relight.params import RelightParams

ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class JobInput:
    """The subject: its original bytes, the URL it came from (if any), and the decoded image."""

    data: bytes
    url: str | None
    image: Image.Image


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    content_type: str
    width: int
    height: int
    seed: int


@dataclass(frozen=True)
class BackendResult:
    images: list[RenderedImage]
    node: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        """Relight the subject; raise BackendFailed (retryable or not) when it cannot."""
        ...
