"""The denoising loop: DPM++ 2M SDE Karras, txt2img or img2img, conditions concatenated.

It does what diffusers' StableDiffusion(Img2Img)Pipeline does with the reference's hooked UNet
(same random draws in the same order, same timesteps, same guidance), but with a scheduler
made for this one call, so concurrent requests never share solver state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

# The reference's DPMSolverMultistepScheduler arguments. It names no beta_schedule, so diffusers'
# default, "linear", applies: betas run linearly from 0.00085 to 0.012 (not SD's scaled_linear).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "algorithm_type": "sde-dpmsolver++",
    "use_karras_sigmas": True,
    "steps_offset": 1,
}

UNetCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[], None]


def new_scheduler() -> DPMSolverMultistepScheduler:
    """A fresh solver (its state is per call: step index, previous model outputs)."""
    return DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)


def img2img_steps(steps: int, strength: float) -> tuple[int, int]:
    """(scheduler steps, steps actually run) for img2img as the reference asks for it.

    The reference asks for round(steps / strength) steps and keeps the last `strength` of them,
    so about `steps` steps run. At least one runs (the reference would crash on zero).
    """
    total = max(1, round(steps / strength))
    run = max(1, min(int(total * strength), total))
    return total, run


@dataclass(frozen=True, slots=True)
class Guidance:
    """Text conditioning for one batch: embeddings already repeated to the batch size."""

    cond: torch.Tensor  # (N, L, D)
    uncond: torch.Tensor  # (N, L, D)
    scale: float

    @property
    def classifier_free(self) -> bool:
        # cfg == 1 makes the guided prediction equal the conditional one: skip the other half.
        return self.scale > 1

    def hidden_states(self) -> torch.Tensor:
        if self.classifier_free:
            return torch.cat([self.uncond, self.cond])
        return self.cond


def denoise(
    unet: UNetCall,
    *,
    init_latents: torch.Tensor | None,
    shape: tuple[int, int, int, int],
    condition: torch.Tensor,
    guidance: Guidance,
    steps: int,
    strength: float,
    generator: torch.Generator,
    dtype: torch.dtype,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run one pass; `init_latents` None means txt2img from noise, else img2img at `strength`.

    `condition` is concatenated to every UNet input on the channel axis: the (1, 4, h, w)
    foreground latent (fc), or foreground and background latents, (1, 8, h, w) (fbc).
    """
    device = condition.device
    scheduler = new_scheduler()
    if init_latents is None:
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents * scheduler.init_noise_sigma
    else:
        total, run = img2img_steps(steps, strength)
        scheduler.set_timesteps(total, device=device)
        start = (total - run) * scheduler.order
        timesteps = scheduler.timesteps[start:]
        scheduler.set_begin_index(start)
        init = init_latents.to(device=device, dtype=dtype)
        if init.shape[0] != shape[0]:
            init = torch.cat([init] * (shape[0] // init.shape[0]), dim=0)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(shape[0]))

    hidden_states = guidance.hidden_states().to(dtype)
    batch = hidden_states.shape[0]
    concat = torch.cat([condition.to(device=device, dtype=dtype)] * batch, dim=0)
    for t in timesteps:
        model_input = torch.cat([latents] * 2) if guidance.classifier_free else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise_pred = unet(torch.cat([model_input, concat], dim=1), t, hidden_states)
        if guidance.classifier_free:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance.scale * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, generator=generator, return_dict=False)[0]
        if on_step is not None:
            on_step()
    result: torch.Tensor = latents
    return result
