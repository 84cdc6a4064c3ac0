"""Standard Webhooks signatures, made with the `standardwebhooks` package (not by hand)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks.webhooks import Webhook


def generate_secret() -> str:
    """A new signing secret: `whsec_` and 32 random bytes in base64, as the spec writes it."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signature_header(secrets_in_use: list[str], message_id: str, at: datetime, body: str) -> str:
    """`v1,<sig> v1,<sig>`: one signature per secret (two during a rotation's overlap)."""
    return " ".join(
        Webhook(secret).sign(msg_id=message_id, timestamp=at, data=body)
        for secret in secrets_in_use
    )
