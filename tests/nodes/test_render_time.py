"""The worker's timeout for a GPU render follows the request's size."""

from __future__ import annotations

from relight.core.params import RelightParams
from relight.nodes.render_time import estimated_render_s, gpu_render_timeout_s

DEFAULTS = RelightParams(prompt="a cat")  # Segmind's: 512x640, 25 steps, highres 1.5, 1 image
WORST = RelightParams(
    prompt="a cat", width=1024, height=1024, highres_scale=3, number_of_images=12, steps=100
)


def test_segmind_defaults_keep_the_plain_job_timeout() -> None:
    assert estimated_render_s(DEFAULTS) < 10
    assert gpu_render_timeout_s(DEFAULTS, floor_s=300, ceiling_s=3600) == 300


def test_the_worst_valid_request_gets_far_more_than_300_s_up_to_the_ceiling() -> None:
    twelve_at_3072 = WORST.model_copy(update={"steps": 25})
    # Tens of seconds per highres step: 25 steps alone are far past 300 s.
    assert estimated_render_s(twelve_at_3072) > 25 * 10
    assert 300 < gpu_render_timeout_s(twelve_at_3072, floor_s=300, ceiling_s=1e9)
    assert gpu_render_timeout_s(WORST, floor_s=300, ceiling_s=3600) == 3600


def test_the_timeout_grows_with_images_steps_and_size() -> None:
    def timeout(**change: object) -> float:
        return gpu_render_timeout_s(DEFAULTS.model_copy(update=change), floor_s=0, ceiling_s=1e9)

    base = timeout()
    assert timeout(number_of_images=4) > 3 * base
    assert timeout(steps=50) > 1.4 * base
    assert timeout(width=1024, height=1024) > 2 * base
    assert timeout(cfg=1) < base
