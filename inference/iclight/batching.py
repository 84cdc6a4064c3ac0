"""Dynamic batching: concurrent requests that share a denoising pass ride in one UNet batch.

A node renders each request on its own thread. When a request reaches a denoising pass, it
joins the open group of its `PassShape` (same latent size, steps, img2img strength, guidance
on or off, prompt length, condition channels, model) if the group has room for its images,
or opens one. The thread that opened a group leads it: it waits up to the batch window for
company, but only while other requests are inside the engine and could still join, then runs
the pass for the whole group (`denoise_together`) and wakes the others. A lone request never
waits. Everything per request stays its own: generator, prompts, conditions, guidance scale,
progress and errors; only the UNet calls are shared.

Python threads are enough: the work runs in torch kernels that release the GIL, and the only
shared state is the open-group table under one lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from inference.iclight.sampling import PassJob, PassShape

GroupKey = tuple[str, PassShape]


class BatchObserver(Protocol):
    """Told about every pass the batcher runs (the node's metrics implement it)."""

    def pass_ran(self, images: int, requests: int, steps: int, seconds: float) -> None: ...


@dataclass(eq=False)
class _Group:
    jobs: list[PassJob]
    images: int
    done: threading.Event = field(default_factory=threading.Event)


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
        execute: Callable[[PassShape, list[PassJob]], None],
    ) -> None:
        """Run `job`'s pass, alone or with company; on return `job.result` or `job.error`."""
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
        if not leader:
            group.done.wait()
            return
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
        started = time.perf_counter()
        try:
            execute(key[1], group.jobs)
        except Exception as exc:  # e.g. out of memory: every member learns it
            for member in group.jobs:
                if member.error is None:
                    member.error = exc
        finally:
            group.done.set()
        if self.observer is not None:
            self.observer.pass_ran(
                group.images, len(group.jobs), key[1].steps_run, time.perf_counter() - started
            )
