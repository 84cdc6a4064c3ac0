"""The operators' page's flash: what an action did, shown once on the page it redirects to.

Carried in the redirect's query string (POST-redirect-GET, no server state: any api replica
shows it), and signed with the session's CSRF token, so a link from elsewhere cannot make the
page show a message of its choosing: a flash shows only in the session that made it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

from fastapi import Request

from api.ui.pages import templates
from api.ui.session import OperatorSession

Kind = Literal["notice", "error"]
MESSAGE, KIND, SIGNATURE = "flash", "flash_kind", "flash_sig"


@dataclass(frozen=True)
class Flash:
    message: str
    kind: Kind


def _signature(operator: OperatorSession, kind: str, message: str) -> str:
    return hmac.new(
        operator.csrf_token.encode(), f"flash:{kind}:{message}".encode(), hashlib.sha256
    ).hexdigest()


def with_flash(operator: OperatorSession, path: str, message: str, kind: Kind = "notice") -> str:
    """`path` with `message` to show there once the browser follows the redirect."""
    query = urlencode(
        {MESSAGE: message, KIND: kind, SIGNATURE: _signature(operator, kind, message)}
    )
    return f"{path}?{query}"


def flash_of(request: Request, operator: OperatorSession | None) -> Flash | None:
    """The flash this page's address carries, if this session signed it."""
    params = request.query_params
    message, kind, signature = params.get(MESSAGE), params.get(KIND), params.get(SIGNATURE)
    if operator is None or not message or kind not in ("notice", "error") or not signature:
        return None
    expected = _signature(operator, kind, message)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return None
    return Flash(message, "error" if kind == "error" else "notice")


# `_flash.html` shows it on any page that includes it.
templates.env.globals["flash_of"] = flash_of
