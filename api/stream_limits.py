"""How many status streams one API key, and one tenant, hold open at once (in this process).

A stream holds a connection, a descriptor and a follower of the job notifications for as long
as the client stays; without a bound one key could take every descriptor of the process.
The count is per api process (each replica bounds its own streams, so a key may hold the
limit on each replica): a stream is a connection to one process, and what exhausts is that
process's descriptors. A slot is given back when its stream's response ends, however it ends
(the request finished, the client left, the server shut down).
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from relight.core.errors import RelightError

# What a client told to wait is told: streams end when their requests finish.
RETRY_AFTER_S = 5


class TooManyStreams(RelightError):
    status_code = 429
    code = "too_many_streams"


class StreamSlots:
    """Open status streams by API key and by tenant."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    def take(
        self, raw_key: str, tenant_id: uuid.UUID, *, per_key: int, per_tenant: int
    ) -> Callable[[], None]:
        """A slot for one more stream of this key and tenant (429 `too_many_streams` when
        either has its limit open); the function that gives it back (once, however often
        it is called)."""
        key = "key:" + hashlib.sha256(raw_key.encode()).hexdigest()
        tenant = f"tenant:{tenant_id}"
        for name, held, limit in (
            ("this API key", self.open[key], per_key),
            ("this account", self.open[tenant], per_tenant),
        ):
            if held >= limit:
                raise TooManyStreams(
                    f"{name} has {held} status streams open, the limit; close one, or retry "
                    f"in {RETRY_AFTER_S} s",
                    extra={"limit": limit, "headers": {"Retry-After": str(RETRY_AFTER_S)}},
                )
        self.open[key] += 1
        self.open[tenant] += 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            for name in (key, tenant):
                self.open[name] -= 1
                if self.open[name] <= 0:
                    del self.open[name]

        return give_back


class SlotEventSourceResponse(EventSourceResponse):
    """An event stream that gives its slot back when the response ends, however it ends."""

    def __init__(self, *args: Any, give_back: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.give_back = give_back

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.give_back()

    def __del__(self) -> None:
        # A response never sent (its request failed after the route returned) holds no slot.
        self.give_back()
