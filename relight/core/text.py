"""Text that Postgres can store: the one rule for every string a client sends.

Postgres refuses U+0000 in `text` and `jsonb`, and a lone surrogate (U+D800–U+DFFF, which
JSON's `\\ud800` escapes can produce) has no UTF-8 encoding, so either would fail in the
driver, after the request was accepted, as a 500. Every request body derives from
`relight.core.client_model.ClientModel`, which refuses them in any string field (at any depth) as a
422 naming the field; path parameters and headers that reach a query use `check_storable`
through `StorableStr`. Nothing is stored, and no credit moves, before this check has passed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_character(text: str) -> str | None:
    """Why `text` cannot be stored, or None when it can."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    code_point = ord(found.group())
    what = "NUL" if code_point == 0 else "a lone surrogate"
    return f"must not contain U+{code_point:04X} ({what}), which cannot be stored"


def storable_text(text: str) -> str:
    """`text` made storable, for what others wrote that we only keep (a webhook receiver's
    answer, an error message): each NUL and lone surrogate becomes U+FFFD."""
    return UNSTORABLE.sub("\ufffd", text)


def check_storable(value: Any) -> Any:
    """`value` unchanged if every string in it (lists and dicts included) can be stored."""
    if isinstance(value, str):
        problem = unstorable_character(value)
        if problem is not None:
            raise ValueError(problem)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            check_storable(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key)
            check_storable(item)
    return value


StorableStr = Annotated[str, AfterValidator(check_storable)]
