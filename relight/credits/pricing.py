"""The price of a request, in integer credits, in one place.

The default request (one 768×960 image at 25 steps) costs `credits_per_default_image`; the
price scales with output pixels, steps and the number of images, rounded up, at least 1.
"""

from __future__ import annotations

import math

from relight.core.params import RelightParams

DEFAULT_OUTPUT_PIXELS = 768 * 960
DEFAULT_STEPS = 25


def price(params: RelightParams, credits_per_default_image: int) -> int:
    if credits_per_default_image == 0:
        return 0
    width, height = params.output_size
    units = (width * height / DEFAULT_OUTPUT_PIXELS) * (params.steps / DEFAULT_STEPS)
    per_image = credits_per_default_image * units
    # Round per request, not per image, and guard against float dust (10.000000001 → 10).
    return max(1, math.ceil(round(per_image * params.number_of_images, 6)))
