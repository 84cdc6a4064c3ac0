"""API keys: 256-bit secrets, stored as hashes, with a checksum that catches typos early."""

from __future__ import annotations

import base64

from relight.tenants.keys import generate_key, hash_secret, parse_key, secret_matches


def test_a_generated_key_parses_and_its_secret_is_256_bits() -> None:
    new = generate_key()
    parsed = parse_key(new.key)
    assert parsed is not None
    prefix, secret = parsed
    assert prefix == new.prefix
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert new.secret_hash == hash_secret(secret)
    assert secret not in new.secret_hash
    assert secret_matches(secret, new.secret_hash)


def test_any_single_character_typo_fails_the_checksum() -> None:
    key = generate_key().key
    body_start = len("rl_")
    for position in range(body_start, len(key)):
        if key[position] == "_":
            continue
        replacement = "B" if key[position] != "B" else "C"
        typo = key[:position] + replacement + key[position + 1 :]
        assert parse_key(typo) is None, position


def test_malformed_keys_are_refused_without_a_lookup() -> None:
    for raw in ["", "rl_", "rl_nope", "sk_live_123", generate_key().key[:-1], "x" * 70]:
        assert parse_key(raw) is None


def test_keys_are_unique() -> None:
    assert len({generate_key().key for _ in range(1000)}) == 1000
