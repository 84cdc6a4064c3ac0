"""The usage report's JSON (and the columns of its CSV)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class GroupBy(StrEnum):
    """What one period of a usage report is."""

    DAY = "day"
    BACKEND = "backend"
    KEY = "key"


class UsageFigures(BaseModel):
    requests: int = Field(description="requests accepted in the period (any status)")
    completed: int = Field(description="of which COMPLETED")
    failed: int = Field(description="of which FAILED")
    canceled: int = Field(description="of which CANCELED")
    images: int = Field(description="images those requests produced")
    credits_charged: int = Field(
        description="credits taken in the period: reservations less what settling released "
        "(ledger `reserve` and `charge` entries, negated)"
    )
    credits_refunded: int = Field(description="credits refunded in the period (`refund` entries)")
    credits_net: int = Field(description="`credits_charged` − `credits_refunded`")
    gpu_seconds: float = Field(
        description="time the requests' calls to GPU nodes took (every attempt, failed ones too)"
    )


class UsagePeriod(UsageFigures):
    period: str = Field(
        description="the UTC day (`YYYY-MM-DD`), the backend that rendered (`none`: never "
        "ran), or the prefix of the API key that submitted (`none`: unknown)"
    )


class UsageReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    data: list[UsagePeriod] = Field(description="periods with any activity, in order")
    start: datetime = Field(alias="from", description="the window's start (inclusive, UTC)")
    end: datetime = Field(alias="to", description="the window's end (exclusive, UTC)")
    group_by: GroupBy
    totals: UsageFigures = Field(description="the sums over the window")
