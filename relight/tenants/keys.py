"""API key format: `rl_<prefix>_<secret><checksum>`.

The prefix (12 hex characters) is public and indexed, so a key is found with one lookup; the
secret is 256 random bits (43 base64url characters), of which only a SHA-256 hash is stored. A
fast hash is right here: the secret has full entropy, so there is nothing for a slow hash to
protect against. The 6-character checksum (CRC-32 in base 62) lets a mistyped or made-up key
fail without a database lookup, and lets secret scanners recognise real keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

KEY_PATTERN = re.compile(r"^rl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})([0-9A-Za-z]{6})$")
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class NewKey:
    key: str
    prefix: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def checksum(prefix: str, secret: str) -> str:
    value = zlib.crc32(f"{prefix}_{secret}".encode())
    digits = []
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def format_key(prefix: str, secret: str) -> str:
    return f"rl_{prefix}_{secret}{checksum(prefix, secret)}"


def generate_key() -> NewKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key=format_key(prefix, secret), prefix=prefix, secret_hash=hash_secret(secret))


def parse_key(raw: str) -> tuple[str, str] | None:
    """`(prefix, secret)` of a well-formed key with a valid checksum, else None."""
    match = KEY_PATTERN.match(raw.strip())
    if match is None:
        return None
    prefix, secret, check = match.groups()
    if not hmac.compare_digest(check, checksum(prefix, secret)):
        return None
    return prefix, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
