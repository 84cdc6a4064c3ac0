"""Views and bodies for the credit ledger (the account's view is `relight.tenants.schemas`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from relight.core.client_model import ClientModel
from relight.core.models import CreditEntry
from relight.credits.service import MAX_MOVEMENT


class CreditEntryView(BaseModel):
    id: uuid.UUID
    kind: str
    amount: int
    balance_after: int
    request_id: uuid.UUID | None
    reason: str | None
    created_at: datetime

    @classmethod
    def of(cls, entry: CreditEntry) -> CreditEntryView:
        return cls(
            id=entry.id,
            kind=entry.kind,
            amount=entry.amount,
            balance_after=entry.balance_after,
            request_id=entry.job_id,
            reason=entry.reason,
            created_at=entry.created_at,
        )


class LedgerPage(BaseModel):
    balance: int
    data: list[CreditEntryView]
    next_cursor: str | None


class CreditMovement(ClientModel):
    """A grant (positive) or an adjustment (either sign) by an operator."""

    model_config = ConfigDict(extra="forbid")

    amount: int = Field(
        ge=-MAX_MOVEMENT,
        le=MAX_MOVEMENT,
        description="credits to add (negative: to remove, adjust only)",
    )
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    kind: Literal["grant", "adjust"] = "grant"


class UserCredits(BaseModel):
    """Segmind's `GET /v1/get-user-credits` answer."""

    credits: int
