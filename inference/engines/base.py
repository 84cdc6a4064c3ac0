"""The interface every relighting engine implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from PIL import Image

from relight.core.params import RelightParams

ProgressCallback = Callable[[float], None]


class ProgressCounter:
    """Counts the stages (or denoising steps) done out of `total` and reports the fraction
    to the caller's progress callback, never past 1."""

    def __init__(self, progress: ProgressCallback | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def advance(self, stages: int = 1) -> None:
        self.done = min(self.done + stages, self.total)
        if self.progress is not None:
            self.progress(self.done / self.total)


class RelightEngine(Protocol):
    """Turns one subject image into `params.number_of_images` relit images.

    Contract: images are RGB, sized `params.output_size`; the same subject, params and seed give
    identical pixels; `progress`, when given, is called with fractions in [0, 1]. An engine
    that `serves_backgrounds` relights onto `background` for requests with a
    `background_source` (IC-Light fbc); the node refuses such requests for the others.
    """

    name: str
    model: str
    serves_backgrounds: bool

    def relight(
        self,
        subject: Image.Image,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None = None,
        background: Image.Image | None = None,
    ) -> list[Image.Image]: ...
