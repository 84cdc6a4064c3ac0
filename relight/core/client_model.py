"""`ClientModel`: the base of every model a client's request body is read into.

Its one rule is the storable-text rule of `relight.core.text`, applied to every string field at any
depth, so that text Postgres cannot store is a 422 naming the field before anything is stored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator

from relight.core.text import check_storable


class ClientModel(BaseModel):
    """Base of every model a client's request is read into."""

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return check_storable(value)
