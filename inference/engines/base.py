"""The interface every relighting engine implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from PIL import Image

from relight.params import RelightParams

ProgressCallback = Callable[[float], None]


class RelightEngine(Protocol):
    """Turns one subject image into `params.number_of_images` relit images.

    Contract: images are RGB, sized `params.output_size`; the same subject, params and seed give
    identical pixels; `progress`, when given, is called with fractions in [0, 1].
    """

    name: str
    model: str

    def relight(
        self,
        subject: Image.Image,
        params: RelightParams,
        seed: int,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]: ...
