"""Dynamic batching: concurrent requests that share a denoising pass ride in one UNet batch.

A node renders each request on its own thread. When a request reaches a denoising pass, it
joins the open group of its `PassShape` (same latent size, steps, img2img strength, guidance
on or off, prompt length, condition channels, model) if the group has room for its images,
or opens one. The thread that opened a group leads it: it waits up to the batch window for
company, but only while other requests are inside the engine and could still join, then
starts the pass for the whole group (`denoise_steps`). A lone request never waits.
Everything per request stays its own: generator, prompts, conditions, guidance scale,
progress and errors; only the UNet calls are shared.

The pass is driven a step at a time by one member's thread at a time. A member that leaves
mid-pass (canceled: its progress callback raised) is out of the next steps (`denoise_steps`
drops its rows, or computes and discards them for a UNet of fixed shapes) and its thread
returns at once, so the node frees its render thread then, not when the pass ends; when the member
leaving was the one driving, another member's thread takes over at the next step.

Python threads are enough: the work runs in torch kernels that release the GIL, and the shared
state is the open-group table under one lock and each group's driving state under its own
condition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from inference.iclight.memory import is_out_of_memory, out_of_memory
from inference.iclight.sampling import PassJob, PassShape

GroupKey = tuple[str, PassShape]


class BatchObserver(Protocol):
    """Told about every pass the batcher runs (the node's metrics implement it)."""

    def pass_ran(self, images: int, requests: int, steps: int, seconds: float) -> None: ...


Steps = Iterator[list[PassJob]]


@dataclass(eq=False)
class _Group:
    jobs: list[PassJob]
    images: int
    changed: threading.Condition = field(default_factory=threading.Condition)
    steps: Steps | None = None  # set by the leader once the window closes
    driving: bool = False  # a member's thread is running steps
    finished: bool = False
    started: float = 0.0

    def waiting_is_over(self, job: PassJob) -> bool:
        """Under `changed`: `job` left, the pass is over, or the wheel is free to take."""
        return (
            job.error is not None or self.finished or (self.steps is not None and not self.driving)
        )


class PassBatcher:
    """Groups concurrent passes of the same shape, up to `max_images` images per UNet batch."""

    def __init__(
        self,
        *,
        max_images: int,
        window_s: float,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_images < 1:
            raise ValueError("max_images must be at least 1")
        self.max_images = max_images
        self.window_s = window_s
        self.observer = observer
        self._lock = threading.Condition()
        self._open: dict[GroupKey, _Group] = {}
        self._active = 0

    @contextmanager
    def request(self) -> Iterator[None]:
        """Mark one request as inside the engine (a possible batch-mate) while it renders."""
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._lock.notify_all()

    def run(
        self,
        key: GroupKey,
        job: PassJob,
        execute: Callable[[PassShape, list[PassJob]], Steps],
    ) -> None:
        """Run `job`'s pass, alone or with company; on return `job.result` or `job.error`
        (returning as soon as `job` leaves the pass, which goes on for the others)."""
        with self._lock:
            group = self._open.get(key)
            if group is not None and group.images + job.count <= self.max_images:
                group.jobs.append(job)
                group.images += job.count
                if group.images >= self.max_images:
                    del self._open[key]
                self._lock.notify_all()
                leader = False
            else:
                group = _Group(jobs=[job], images=job.count)
                if job.count < self.max_images:
                    self._open[key] = group
                leader = True
        if leader:
            self._wait_for_company(key, group)
            with group.changed:
                group.started = time.perf_counter()
                try:
                    group.steps = execute(key[1], group.jobs)
                except Exception as exc:  # the pass could not start: every member learns it
                    _fail_all(group, exc)
                    group.finished = True
                    group.changed.notify_all()
                    return
        self._take_part(key[1], group, job)

    def _wait_for_company(self, key: GroupKey, group: _Group) -> None:
        """Hold the group open for the batch window, while others could still join."""
        deadline = time.monotonic() + self.window_s
        with self._lock:
            while (
                self._open.get(key) is group
                and self._active > len(group.jobs)
                and (remaining := deadline - time.monotonic()) > 0
            ):
                self._lock.wait(remaining)
            if self._open.get(key) is group:
                del self._open[key]

    def _take_part(self, shape: PassShape, group: _Group, job: PassJob) -> None:
        """Wait, or drive the pass's steps when nobody is, until `job` leaves or it ends."""
        with group.changed:
            group.changed.wait_for(lambda: group.waiting_is_over(job))
            if job.error is not None or group.finished:
                return
            group.driving = True
        assert group.steps is not None
        finished = True
        try:
            for left in group.steps:
                if left:
                    with group.changed:
                        group.changed.notify_all()  # the members that left go at once
                if job.error is not None:
                    finished = all(member.error is not None for member in group.jobs)
                    break  # someone still in the pass takes the wheel
        except BaseException as exc:  # e.g. out of memory: every member learns it
            _fail_all(group, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            with group.changed:
                group.driving = False
                group.finished = finished
                group.changed.notify_all()
        if finished and self.observer is not None:
            self.observer.pass_ran(
                group.images, len(group.jobs), shape.steps_run, time.perf_counter() - group.started
            )


def _fail_all(group: _Group, exc: BaseException) -> None:
    """Give `exc` to every member still in the pass. Out of memory, each member gets its own
    traceback-free error instead (`inference.iclight.memory`): the pass's tensors, held by
    the frames of `exc`'s traceback, are freed as soon as the caller's `except` block ends."""
    oom = is_out_of_memory(exc)
    for member in group.jobs:
        if member.error is None:
            member.error = out_of_memory(exc) if oom else exc
