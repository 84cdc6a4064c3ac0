"""A job that leaves a shared denoising pass mid-way (its progress callback raised: canceled)
leaves the others' latents exactly as they would be alone, whether its rows are dropped from
the next steps or run on to the end (for a UNet that keeps its batch size: CUDA graphs,
torch.compile).

The UNet here is a stand-in in which each row's prediction depends on that row alone (the real
UNet's batch-size rounding is covered by test_pass_batching.py), so "as alone" is exact: the
solver, the guidance, the noise draws and the row bookkeeping are what is tested.
"""

from __future__ import annotations

import pytest
import torch

from inference.iclight.sampling import (
    LATENT_CHANNELS,
    Guidance,
    PassJob,
    PassShape,
    denoise_steps,
)

SIDE = 8
STEPS = 6
PROMPT = 77
WIDTH = 16
SHAPE = PassShape(
    height=SIDE,
    width=SIDE,
    steps=STEPS,
    strength=None,
    classifier_free=True,
    prompt_length=PROMPT,
    condition_channels=LATENT_CHANNELS,
    dtype=torch.float32,
)


class StandInUNet:
    """Row-wise arithmetic on the latents, the condition and the prompt; notes batch sizes."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(sample.shape[0])
        latents, condition = sample[:, :LATENT_CHANNELS], sample[:, LATENT_CHANNELS:]
        prompt = hidden.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return 0.3 * latents + 0.2 * condition + prompt + float(t) * 1e-4


def job(seed: int, count: int, leave_after: int | None = None) -> PassJob:
    """A request's share of a pass, the same every time for the same seed."""
    draw = torch.Generator().manual_seed(1000 + seed)
    condition = torch.randn(1, LATENT_CHANNELS, SIDE, SIDE, generator=draw)
    cond = torch.randn(1, PROMPT, WIDTH, generator=draw).repeat(count, 1, 1)
    uncond = torch.randn(1, PROMPT, WIDTH, generator=draw).repeat(count, 1, 1)
    steps_done = 0

    def on_step() -> None:
        nonlocal steps_done
        steps_done += 1
        if leave_after is not None and steps_done == leave_after:
            raise ConnectionError("canceled")

    return PassJob(
        count=count,
        condition=condition,
        guidance=Guidance(cond=cond, uncond=uncond, scale=4.0 + seed),
        generator=torch.Generator().manual_seed(seed),
        on_step=on_step,
    )


def alone(seed: int, count: int) -> torch.Tensor:
    single = job(seed, count)
    for _ in denoise_steps(StandInUNet(), SHAPE, [single]):
        pass
    assert single.result is not None
    return single.result


@pytest.mark.parametrize("drop_departed", [True, False])
def test_the_others_get_their_lone_latents_when_a_job_leaves_mid_pass(
    drop_departed: bool,
) -> None:
    first, leaving, last = job(1, 2), job(2, 1, leave_after=2), job(3, 1)
    unet = StandInUNet()

    departures = list(
        denoise_steps(unet, SHAPE, [first, leaving, last], drop_departed=drop_departed)
    )

    # It left after the second step, and was told so once.
    assert [[id(j) for j in left] for left in departures] == [[], [id(leaving)]] + [[]] * 4
    assert isinstance(leaving.error, ConnectionError)
    assert leaving.result is None
    assert first.result is not None
    assert last.result is not None
    assert torch.equal(first.result, alone(1, 2))
    assert torch.equal(last.result, alone(3, 1))
    # 4 images, twice over with guidance; then 3, or still 4 when the batch keeps its size.
    after = 6 if drop_departed else 8
    assert unet.batch_sizes == [8, 8] + [after] * (STEPS - 2)


def test_the_pass_stops_when_everyone_has_left() -> None:
    both = [job(1, 1, leave_after=3), job(2, 1, leave_after=3)]
    unet = StandInUNet()

    departures = list(denoise_steps(unet, SHAPE, both, drop_departed=False))

    assert len(unet.batch_sizes) == 3
    assert len(departures[-1]) == 2
    assert all(isinstance(j.error, ConnectionError) and j.result is None for j in both)
