"""API key format: `rl_<prefix>_<secret>`.

The prefix (12 hex characters) is public and indexed, so a key is found with one lookup; the
secret is 256 random bits, of which only a SHA-256 hash is stored. A fast hash is right here:
the secret has full entropy, so there is nothing for a slow hash to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PATTERN = re.compile(r"^rl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewKey:
    key: str
    prefix: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> NewKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key=f"rl_{prefix}_{secret}", prefix=prefix, secret_hash=hash_secret(secret))


def parse_key(raw: str) -> tuple[str, str] | None:
    """`(prefix, secret)` of a well-formed key, else None (no database lookup needed)."""
    match = KEY_PATTERN.match(raw.strip())
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
