"""The attempt log: `job.backend_calls`, one entry per attempt at running a job.

An entry names the backend, the outcome (`ok` or `failed`, with the error's code and whether it
was worth another try or another backend) and the calls the backend made outside the worker
(Segmind's API, GPU nodes). Routing decides from this log alone, so a decision survives retries
on other workers. The stored JSON is the contract (the request record shows it, old rows keep
it): `to_json` writes exactly that shape and `from_json` reads it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from relight.core.errors import BackendFailed
from relight.core.params import Backend

Outcome = Literal["ok", "failed"]


@dataclass(frozen=True)
class BackendCall:
    """One call a backend made to something outside the worker, as recorded on the job."""

    backend: Backend
    started_at: str
    latency_ms: float
    outcome: str
    status_code: int | None = None
    error: str | None = None
    remaining_credits: float | None = None
    node: str | None = None

    def as_json(self) -> dict[str, object]:
        """The stored form: fields that are not set are left out."""
        return {
            key: value.value if isinstance(value, Backend) else value
            for key, value in asdict(self).items()
            if value is not None
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackendCall:
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        return cls(**{**values, "backend": Backend(data["backend"])})


@dataclass(frozen=True)
class Attempt:
    """One attempt at running a job, on one backend."""

    attempt: int
    backend: Backend
    outcome: Outcome
    calls: tuple[BackendCall, ...] = ()
    # Set on failure only: the error's code, and what it allows next.
    code: str | None = None
    retryable: bool | None = None
    failover: bool | None = None

    @classmethod
    def record(
        cls,
        attempt: int,
        backend: Backend,
        error: BackendFailed | None,
        calls: Iterable[BackendCall] = (),
    ) -> Attempt:
        """The entry for attempt number `attempt` on `backend`: ok without `error`."""
        if error is None:
            return cls(attempt, backend, "ok", tuple(calls))
        return cls(
            attempt,
            backend,
            "failed",
            tuple(calls),
            code=error.code,
            retryable=error.retryable,
            failover=error.failover,
        )

    @property
    def failed_for_good(self) -> bool:
        """A failure that another try on the same backend would not mend."""
        return self.outcome == "failed" and not self.retryable

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "attempt": self.attempt,
            "backend": self.backend.value,
            "calls": [call.as_json() for call in self.calls],
            "outcome": self.outcome,
        }
        if self.outcome == "failed":
            entry |= {"code": self.code, "retryable": self.retryable, "failover": self.failover}
        return entry

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        outcome = data["outcome"]
        if outcome not in ("ok", "failed"):
            raise ValueError(f"an attempt's outcome is ok or failed, not {outcome!r}")
        return cls(
            attempt=int(data["attempt"]),
            backend=Backend(data["backend"]),
            outcome=outcome,
            calls=tuple(BackendCall.from_json(call) for call in data.get("calls", [])),
            code=data.get("code"),
            retryable=data.get("retryable"),
            failover=data.get("failover"),
        )


def read_attempts(log: Iterable[Mapping[str, Any]]) -> list[Attempt]:
    """The stored attempt log (`job.backend_calls`) as records."""
    return [Attempt.from_json(entry) for entry in log]
