"""What a backend is to the job runner: subject in, encoded images out.

A backend records every call it makes outside the worker in the `calls` it is given (even when
it then fails), and fails only by raising `BackendFailed`, whose `retryable` and `failover` tell
routing whether to try it again or move on to the next backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from relight.backends.attempts import BackendCall
from relight.core.errors import BackendFailed
from relight.core.params import Backend, RelightParams

ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class JobInput:
    """The subject: its original bytes, the URL it came from (if any), and the decoded image."""

    job_id: uuid.UUID
    data: bytes
    url: str | None
    image: Image.Image
    # What the job asked for (`auto` or a backend's name): a backend may wait for capacity
    # when it was asked for by name, and should step aside at once under `auto`.
    backend_requested: Backend = Backend.AUTO
    # The background image's bytes, for a `background_source` built from one (IC-Light fbc).
    background: bytes | None = None


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
    # The GPU node's model digest (the weights that rendered the images), for the job record.
    model_digest: str | None = None


@runtime_checkable
class ReportsAvailability(Protocol):
    """A backend that may have nothing to run on right now (GPU nodes that come and go)."""

    async def available(self) -> bool: ...


async def is_available(backend: object) -> bool:
    """Whether the backend has something to run on now; backends that cannot tell always do."""
    if isinstance(backend, ReportsAvailability):
        return await backend.available()
    return True


class RenderBackend(Protocol):
    """A backend the runner renders on: `local`, `segmind` or `gpu` (or a benchmark's stand-in)."""

    name: Backend

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        """Relight the subject, appending any outside call to `calls`; raise BackendFailed
        (retryable or not) when it cannot."""
        ...


def refuse_backgrounds(backend: Backend, params: RelightParams) -> None:
    """For backends without IC-Light's fbc model: a background request is not theirs.

    Routing never sends one (only GPU nodes with the fbc model take them); this makes a
    routing mistake a clear failure instead of an image that ignores the background.
    """
    if params.background_source is not None:
        raise BackendFailed(
            f"the {backend.value} backend cannot relight onto a background",
            code="background_not_served",
            retryable=False,
            failover=True,
        )
