"""Waiting for a condition instead of sleeping for a guessed time.

A test that sleeps 0.35 s and then asserts that a 0.3 s TTL ran out fails whenever the machine
is busy; one that polls until the TTL ran out, with a bound no loaded machine reaches, does
not, and it returns as soon as the condition holds. The bound is what a test may spend, not a
measure of the code: when it matters how long something took, say it with an order of events,
or against what the other behaviour would have cost.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

# Far above what any condition here needs on an idle machine (well under a second), so that
# only a broken behaviour, not a loaded machine, runs into it.
DEFAULT_TIMEOUT_S = 30.0

Condition = Callable[[], bool] | Callable[[], Awaitable[bool]]


async def wait_until(
    condition: Condition,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.02,
    what: str = "condition",
) -> float:
    """Poll `condition` (a function or a coroutine function) until it is true; answer how many
    seconds that took. Fails the test when it is still false after `timeout_s`."""
    began = time.monotonic()
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return time.monotonic() - began
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"{what}: still false after {timeout_s:g} s")
        await asyncio.sleep(interval_s)
