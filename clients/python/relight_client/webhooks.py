"""Verifying Relight's webhooks (Standard Webhooks), with several secrets for rotation.

During a rotation's overlap Relight signs with every secret still in use, so a receiver that
knows either the old or the new secret accepts the delivery; listing both here lets a receiver
roll its configuration at leisure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as _LibraryVerificationError

from relight_client.errors import WebhookVerificationError
from relight_client.models import WebhookEvent


def verify(
    body: bytes | str, headers: Mapping[str, str], secrets: str | Iterable[str]
) -> WebhookEvent:
    """The typed event if one of `secrets` (`whsec_…`) verifies the signature and the timestamp
    is fresh (5 minutes); `WebhookVerificationError` otherwise."""
    if isinstance(secrets, str):
        secrets = [secrets]
    payload = body.decode() if isinstance(body, bytes) else body
    lowered = {name.lower(): value for name, value in headers.items()}
    tried = 0
    for secret in secrets:
        tried += 1
        try:
            Webhook(secret).verify(payload, lowered)
        except _LibraryVerificationError:
            continue
        return WebhookEvent.model_validate_json(payload)
    raise WebhookVerificationError(f"no signature matches any of the {tried} secret(s) given")
