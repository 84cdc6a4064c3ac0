"""A node-wide memory budget: requests are admitted while their UNet work fits in it.

A denoising pass's activations grow with its UNet rows (images, twice over with classifier-free
guidance) times its latent pixels (width/8 × height/8), so a request costs its rows times the
latent pixels of its larger pass (the highres one, unless `highres_scale` is 1). The node admits
requests in arrival order while the sum of what they cost stays within its budget
(`RELIGHT_NODE_LATENT_BUDGET`); a request that fits waits for room (keeping its render thread, its
stream saying it is alive), and one that exceeds the whole budget is refused at once
(`RequestTooLarge`, HTTP 507 `request_too_large`), which workers do not count against the
node's circuit breaker. Batched requests each hold their own share: a shared pass costs what
its members would alone.

The default, `DEFAULT_LATENT_BUDGET`, is sized for one 80 GB GPU serving SD1.5 in fp16: at an
estimated 13 KB of activations per row × latent pixel (the full-resolution UNet blocks' live
tensors, 320 channels in fp16; not yet measured on a GPU: bench/gpu_suite.sh reports the peak
memory to calibrate it) it is about 55 GB, leaving room for the weights, the VAE's decode and
the allocator's slack. The worst valid request (12 images at 3072×3072 after highres, with
guidance) costs 3,538,944, so every valid request fits alone.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from relight.core.errors import RelightError
from relight.core.params import RelightParams

DEFAULT_LATENT_BUDGET = 4_194_304
# The VAE's downscale: one latent pixel per 8×8 image pixels.
LATENT_SCALE = 8
# How often a waiting request runs its `check` (e.g. whether its client went away).
CHECK_S = 1.0


class RequestTooLarge(RelightError):
    """The request alone exceeds the node's whole memory budget."""

    status_code = 507
    code = "request_too_large"


def request_cost(params: RelightParams) -> int:
    """UNet rows × latent pixels of the request's larger denoising pass."""
    rows = params.number_of_images * (2 if params.cfg > 1 else 1)
    lowres = (params.width // LATENT_SCALE) * (params.height // LATENT_SCALE)
    width, height = params.output_size
    highres = (width // LATENT_SCALE) * (height // LATENT_SCALE)
    return rows * max(lowres, highres)


class LatentBudget:
    """Rows × latent pixels in use on the node, handed out first come, first served."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("the latent budget must be positive")
        self.total = total
        self.used = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    def refuse_if_too_large(self, cost: int) -> None:
        """Raise RequestTooLarge when `cost` alone exceeds the whole budget."""
        if cost > self.total:
            raise RequestTooLarge(
                f"the request needs {cost:,} rows × latent pixels, more than this node's whole "
                f"budget of {self.total:,}: ask for fewer or smaller images",
                extra={"cost": cost, "budget": self.total},
            )

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._queue)

    @contextmanager
    def hold(self, cost: int, check: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Hold `cost` of the budget while the block runs, once every request before this one
        was admitted and it fits; `check` runs every CHECK_S while it waits (it may raise to
        give up waiting)."""
        self.refuse_if_too_large(cost)
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                while not (self._queue[0] is ticket and self.used + cost <= self.total):
                    if not self._changed.wait(CHECK_S):
                        check()
            except BaseException:
                self._queue.remove(ticket)
                self._changed.notify_all()
                raise
            self._queue.popleft()
            self.used += cost
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.used -= cost
                self._changed.notify_all()
