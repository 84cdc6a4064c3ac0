"""How long a GPU node may take for a request: the worker's timeout for a `gpu` render grows
with the request's size instead of one fixed `job_timeout_s`.

A UNet step costs about its rows (images, twice over with classifier-free guidance) times its
latent pixels, plus self-attention over the full-resolution latents, which grows with their
square; so the estimate per step is `SECONDS_PER_ROW_PIXEL × rows × pixels × (1 + pixels /
ATTENTION_PIXELS)`, for the low-res pass and the highres pass, each run about `steps` times.
The constants are estimates for SD1.5 in fp16 on one H100 (about 0.04 s per step at Segmind's
defaults, and tens of seconds per step for 12 images at 3072×3072), to calibrate with
bench/gpu_suite.sh; `SAFETY` covers a node sharing its GPU with other requests. The timeout is
the estimate times `SAFETY`, at least `job_timeout_s` and at most `gpu_job_timeout_max_s`.
"""

from __future__ import annotations

from relight.core.params import RelightParams

SECONDS_PER_ROW_PIXEL = 1.2e-6
ATTENTION_PIXELS = 24_000
# Encoding, decoding, transfer: per image, at most a few seconds even at the largest sizes.
SECONDS_PER_IMAGE = 2.0
SAFETY = 3.0
LATENT_SCALE = 8


def _step_s(rows: int, width: int, height: int) -> float:
    pixels = (width // LATENT_SCALE) * (height // LATENT_SCALE)
    return SECONDS_PER_ROW_PIXEL * rows * pixels * (1 + pixels / ATTENTION_PIXELS)


def estimated_render_s(params: RelightParams) -> float:
    """Estimated seconds of a node's GPU alone on `params`."""
    rows = params.number_of_images * (2 if params.cfg > 1 else 1)
    seconds = params.steps * _step_s(rows, params.width, params.height)
    if params.highres_scale > 1:
        width, height = params.output_size
        seconds += params.steps * _step_s(rows, width, height)
    return seconds + SECONDS_PER_IMAGE * params.number_of_images


def gpu_render_timeout_s(params: RelightParams, *, floor_s: float, ceiling_s: float) -> float:
    """The worker's timeout for rendering `params` on a GPU node."""
    return min(ceiling_s, max(floor_s, SAFETY * estimated_render_s(params)))
