"""Tenant names that cannot pass for one another on the operators' page or in a listing.

A restricted identifier profile (after Unicode TR 39's "highly restrictive" level): a name is
in NFKC already (no fullwidth or compatibility forms), its digits are ASCII, and its letters
come from one script, or from Latin with Han and Japanese kana, Han and Bopomofo, or Han and
Hangul. A new name is also refused when its skeleton equals an existing tenant's.

The skeleton: NFKC, then `CONFUSABLES` (a small table of the letters of Cyrillic and Greek,
and the ASCII digits and capitals, that look like Latin ones), case folded, then the table
again (for what case folding produced) and `rn` read as `m`. The full TR 39 confusables data
is not shipped with Python; this table covers the lookalikes of the Latin letters tenant
names are mostly written in.
"""

from __future__ import annotations

import unicodedata

CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "ь": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "ɡ": "g",
        "һ": "h", "н": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "ӏ": "l", "м": "m",
        "п": "n", "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s", "т": "t", "у": "y",
        "ԝ": "w", "х": "x", "з": "3",
        # Greek
        "α": "a", "β": "b", "ϲ": "c", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u",
        "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ζ": "z",
        # ASCII
        "0": "o", "1": "l", "I": "l", "|": "l",
    }
)  # fmt: skip
# Scripts that may share a name (besides Latin alone or any one script).
SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# The first word of a character's Unicode name, where it is not the script's name (None: a
# character common to several scripts, such as the Japanese prolonged sound mark).
SCRIPT_ALIASES: dict[str, str | None] = {"CJK": "HAN", "KATAKANA-HIRAGANA": None}


def script_of(character: str) -> str | None:
    """The script of a letter (by the first word of its Unicode name), None for the ASCII
    digits and punctuation a name may hold, and for combining marks (they take their base's)."""
    if character.isascii() and not character.isalpha():
        return None
    if unicodedata.category(character).startswith("M"):
        return None
    first = unicodedata.name(character, "UNKNOWN").split(" ", 1)[0]
    return SCRIPT_ALIASES.get(first, first)


def confusable_name_problem(name: str) -> str | None:
    """Why `name` could pass for another name, or None (the restricted profile)."""
    if unicodedata.normalize("NFKC", name) != name:
        return "must be in Unicode NFKC form (no fullwidth, compatibility or decomposed letters)"
    if any(c.isdigit() and not c.isascii() for c in name):
        return "may contain only the digits 0-9"
    scripts = {script for script in map(script_of, name) if script is not None}
    if len(scripts) > 1 and not any(scripts <= mix for mix in SCRIPT_MIXES):
        return f"must not mix scripts ({', '.join(sorted(scripts)).lower()})"
    return None


def skeleton(name: str) -> str:
    """What `name` looks like: equal skeletons are names one could take for the other."""
    mapped = unicodedata.normalize("NFKC", name).translate(CONFUSABLES)
    return mapped.casefold().translate(CONFUSABLES).replace("rn", "m")
