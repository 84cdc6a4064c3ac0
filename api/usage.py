"""The query of a usage report (`GET /v2/usage`, and per tenant in the admin API) and its two
renderings: JSON (`UsageReport`) or CSV (`?format=csv`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import error_responses
from relight.usage.schemas import GroupBy, UsageReport
from relight.usage.service import MAX_WINDOW_DAYS, usage_csv, usage_report, usage_window

USAGE_DESCRIPTION = (
    "Requests, images, credits and GPU time in a window, by UTC `day`, `backend` or API `key`. "
    "Credits are the ledger's `reserve`, `charge` and `refund` entries written in the window "
    "(the totals equal the ledger exactly); requests, images and `gpu_seconds` (the time of "
    "every call to a GPU node, failed attempts included) count the requests accepted in it. "
    "`from` and `to` are ISO dates (UTC days; `to` includes its day) or datetimes (`to` "
    f"exclusive); by default the last 30 days; at most {MAX_WINDOW_DAYS} days. "
    "`format=csv` answers the periods as `text/csv` with a header row."
)
USAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "description": "the report (JSON), or its periods as CSV with `format=csv`",
    },
    **error_responses(422),
}


@dataclass(frozen=True)
class UsageQuery:
    start: str | None
    end: str | None
    group_by: GroupBy
    format: Literal["json", "csv"]


async def usage_query(
    start: Annotated[
        str | None,
        Query(alias="from", max_length=40, description="window start: ISO date or datetime"),
    ] = None,
    end: Annotated[
        str | None,
        Query(alias="to", max_length=40, description="window end: ISO date or datetime"),
    ] = None,
    group_by: Annotated[GroupBy, Query(description="one entry per UTC day, backend or key")] = (
        GroupBy.DAY
    ),
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> UsageQuery:
    return UsageQuery(start=start, end=end, group_by=group_by, format=format)


UsageQueryDep = Annotated[UsageQuery, Depends(usage_query)]


async def usage_answer(
    session: AsyncSession, tenant_id: uuid.UUID, query: UsageQuery, filename: str
) -> UsageReport | Response:
    """The tenant's usage report as the query asks for it."""
    start, end = usage_window(query.start, query.end)
    report = await usage_report(session, tenant_id, start, end, query.group_by)
    if query.format == "csv":
        return Response(
            usage_csv(report),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
        )
    return report
