"""The denoising loop: DPM++ 2M SDE Karras, txt2img or img2img, conditions concatenated.

It does what diffusers' StableDiffusion(Img2Img)Pipeline does with the reference's hooked UNet
(same random draws in the same order, same timesteps, same guidance), but with a scheduler
made for this one call, so concurrent requests never share solver state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
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

LATENT_CHANNELS = 4

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


@dataclass(frozen=True, slots=True)
class PassShape:
    """What requests must have in common to share one denoising pass (one UNet batch)."""

    height: int  # latent rows
    width: int  # latent columns
    steps: int
    strength: float | None  # None: txt2img from noise; else img2img at this strength
    classifier_free: bool
    prompt_length: int  # tokens of the hidden states (77 per 75-token piece)
    condition_channels: int  # 4 (fc: foreground) or 8 (fbc: foreground and background)
    dtype: torch.dtype

    @property
    def steps_run(self) -> int:
        """How many UNet steps the pass runs (per half of the guidance batch)."""
        return self.steps if self.strength is None else img2img_steps(self.steps, self.strength)[1]

    def timesteps(
        self, scheduler: DPMSolverMultistepScheduler, device: torch.device
    ) -> torch.Tensor:
        """Set `scheduler` up for this pass; the timesteps it runs."""
        if self.strength is None:
            scheduler.set_timesteps(self.steps, device=device)
            every: torch.Tensor = scheduler.timesteps
            return every
        total, run = img2img_steps(self.steps, self.strength)
        scheduler.set_timesteps(total, device=device)
        start = (total - run) * scheduler.order
        scheduler.set_begin_index(start)
        last: torch.Tensor = scheduler.timesteps[start:]
        return last


@dataclass(slots=True)
class PassJob:
    """One request's share of a pass: its own images, conditions, prompts and random draws.

    `init_latents` (img2img) is one latent or one per image; `condition` the (1, C, h, w)
    latent concatenated to each of its UNet inputs. After the pass, `result` holds its
    latents, or `error` what went wrong for it alone (its `on_step` raised).
    """

    count: int
    condition: torch.Tensor
    guidance: Guidance
    generator: torch.Generator
    init_latents: torch.Tensor | None = None
    on_step: StepCallback | None = None
    result: torch.Tensor | None = None
    error: BaseException | None = None


def denoise_together(unet: UNetCall, shape: PassShape, jobs: list[PassJob]) -> None:
    """Run one pass for every job in one batch; each job gets its `result` (or `error`)."""
    for _ in denoise_steps(unet, shape, jobs):
        pass


def denoise_steps(
    unet: UNetCall, shape: PassShape, jobs: list[PassJob], *, drop_departed: bool = True
) -> Iterator[list[PassJob]]:
    """Run one pass for every job in one batch, a step per iteration: each yields the jobs
    that left at that step (their `on_step` raised, e.g. canceled: `error` is set). The pass
    stops once nobody is left. At the end, every job still in it gets its `result`.

    With `drop_departed`, the rows of jobs that left are dropped from the next steps (less
    work). Without it they run on, discarded, and the UNet's batch size stays as it was: for a
    UNet to which a new batch size costs a CUDA graph capture or a recompile.

    Each job draws its noise from its own generator, in the order and shapes it would alone
    (initial noise, then the SDE noise of every step), and gets its own guidance scale, so its
    images are the ones it would get alone up to the UNet's batch-size rounding (none on a
    CPU in fp32 with one thread), whoever leaves the batch on the way.
    """
    device = jobs[0].condition.device
    scheduler = new_scheduler()
    timesteps = shape.timesteps(scheduler, device)
    latents = _initial_latents(scheduler, timesteps, shape, jobs)
    rows = list(jobs)  # the jobs whose rows the batch computes, in order
    batch = _BatchInputs.of(shape, rows)
    gone: set[int] = set()
    for t in timesteps:
        model_input = torch.cat([latents] * 2) if shape.classifier_free else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise_pred = unet(torch.cat([model_input, batch.concat], dim=1), t, batch.hidden_states)
        if shape.classifier_free:
            noise_pred = _guided(noise_pred, rows, batch.bounds)
        variance = _step_noise(shape, rows, device)
        latents = scheduler.step(
            noise_pred, t, latents, variance_noise=variance, return_dict=False
        )[0]
        _report_step(rows)
        left = [job for job in rows if job.error is not None and id(job) not in gone]
        gone.update(id(job) for job in left)
        staying = [job for job in rows if job.error is None]
        if not staying:
            yield left
            return  # everyone in the batch gave up: stop between steps
        if left and drop_departed:
            keep = batch.rows_of(rows, staying, device)
            latents = latents[keep]
            _keep_solver_rows(scheduler, keep)
            rows = staying
            batch = _BatchInputs.of(shape, rows)
        yield left
    for job, a, b in zip(rows, batch.bounds, batch.bounds[1:], strict=False):
        if job.error is None:
            job.result = latents[a:b]


@dataclass(frozen=True, slots=True)
class _BatchInputs:
    """What a step feeds the UNet besides the latents, for the jobs in the batch (in order)."""

    concat: torch.Tensor  # each image's condition, twice over with guidance
    hidden_states: torch.Tensor
    bounds: list[int]  # job i's latent rows are bounds[i]:bounds[i + 1]

    @classmethod
    def of(cls, shape: PassShape, jobs: list[PassJob]) -> _BatchInputs:
        device = jobs[0].condition.device
        rows = [
            job.condition.to(device=device, dtype=shape.dtype)
            for job in jobs
            for _ in range(job.count)
        ]
        return cls(
            concat=torch.cat(rows * (2 if shape.classifier_free else 1), dim=0),
            hidden_states=_hidden_states(shape, jobs).to(shape.dtype),
            bounds=list(itertools.accumulate([0, *(job.count for job in jobs)])),
        )

    def rows_of(
        self, jobs: list[PassJob], staying: list[PassJob], device: torch.device
    ) -> torch.Tensor:
        """The latent rows of the `staying` jobs (a subsequence of `jobs`, this batch's)."""
        ids = {id(job) for job in staying}
        rows = [
            row
            for job, a, b in zip(jobs, self.bounds, self.bounds[1:], strict=False)
            if id(job) in ids
            for row in range(a, b)
        ]
        return torch.tensor(rows, device=device)


def _keep_solver_rows(scheduler: DPMSolverMultistepScheduler, keep: torch.Tensor) -> None:
    """Drop the rows of departed jobs from the solver's history (the previous steps' model
    outputs, one row per image: the multistep update of the next step reads them)."""
    history = scheduler.model_outputs
    for output in history:
        if output is not None and not isinstance(output, torch.Tensor):
            raise RuntimeError(
                "DPMSolverMultistepScheduler.model_outputs no longer holds tensors: "
                "inference/iclight/sampling.py cannot drop a departed job's rows"
            )
    scheduler.model_outputs = [None if output is None else output[keep] for output in history]


def _initial_latents(
    scheduler: DPMSolverMultistepScheduler,
    timesteps: torch.Tensor,
    shape: PassShape,
    jobs: list[PassJob],
) -> torch.Tensor:
    """Each job's starting latents, in job order: noise (txt2img), or its init latents noised
    to the first timestep (img2img), one draw from its generator either way."""
    device = jobs[0].condition.device
    dtype = shape.dtype
    parts = []
    for job in jobs:
        size = (job.count, LATENT_CHANNELS, shape.height, shape.width)
        if job.init_latents is None:
            noise = randn_tensor(size, generator=job.generator, device=device, dtype=dtype)
            parts.append(noise * scheduler.init_noise_sigma)
        else:
            init = job.init_latents.to(device=device, dtype=dtype)
            if init.shape[0] != job.count:
                init = torch.cat([init] * (job.count // init.shape[0]), dim=0)
            noise = randn_tensor(size, generator=job.generator, device=device, dtype=dtype)
            parts.append(scheduler.add_noise(init, noise, timesteps[:1].repeat(job.count)))
    return torch.cat(parts)


def _hidden_states(shape: PassShape, jobs: list[PassJob]) -> torch.Tensor:
    """The batch's text conditioning: every job's uncond, then every job's cond (with CFG)."""
    if shape.classifier_free:
        return torch.cat(
            [job.guidance.uncond for job in jobs] + [job.guidance.cond for job in jobs]
        )
    return torch.cat([job.guidance.cond for job in jobs])


def _guided(noise_pred: torch.Tensor, jobs: list[PassJob], bounds: list[int]) -> torch.Tensor:
    """Classifier-free guidance, each job's rows at its own scale."""
    uncond, cond = noise_pred.chunk(2)
    return torch.cat(
        [
            uncond[a:b] + job.guidance.scale * (cond[a:b] - uncond[a:b])
            for job, a, b in zip(jobs, bounds, bounds[1:], strict=False)
        ]
    )


def _step_noise(shape: PassShape, jobs: list[PassJob], device: torch.device) -> torch.Tensor:
    """One step's SDE noise, each job's rows drawn from its own generator (fp32, as alone)."""
    return torch.cat(
        [
            randn_tensor(
                (job.count, LATENT_CHANNELS, shape.height, shape.width),
                generator=job.generator,
                device=device,
                dtype=torch.float32,
            )
            for job in jobs
        ]
    )


def _report_step(jobs: list[PassJob]) -> None:
    """Tell each job still running that a step is done; a job whose callback raises fails."""
    for job in jobs:
        if job.on_step is not None and job.error is None:
            try:
                job.on_step()
            except Exception as exc:  # the job's own failure, kept for it alone
                job.error = exc


def pass_shape(
    job: PassJob,
    shape: tuple[int, int, int, int],
    steps: int,
    strength: float,
    dtype: torch.dtype,
) -> PassShape:
    """The PassShape of `job` (batch, channels, height, width latents) at `steps`/`strength`."""
    return PassShape(
        height=shape[2],
        width=shape[3],
        steps=steps,
        strength=None if job.init_latents is None else strength,
        classifier_free=job.guidance.classifier_free,
        prompt_length=job.guidance.cond.shape[1],
        condition_channels=job.condition.shape[1],
        dtype=dtype,
    )
