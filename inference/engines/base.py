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
