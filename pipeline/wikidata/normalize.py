"""The one normalization of search strings, shared by the dump index, the cache and the API.

Mentions and WikiData labels differ in case, Unicode form (full-width letters,
ligatures), spacing and surrounding quotes or punctuation ("«Jordan»", "Jordan,").
Both sides go through the same function, so an exact match on the result is the
match a person would expect, and the cache key of a lookup is that same string:
"Jordan", "jordan " and "JORDAN" are asked once.
"""

from __future__ import annotations

import unicodedata


def _is_edge_noise(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


# ASCII text (most labels) takes a shortcut with the same result: NFKC leaves it
# unchanged, casefold() is lower(), and str.strip() removes these same characters.
_ASCII_EDGE_NOISE = "".join(c for c in map(chr, range(128)) if _is_edge_noise(c))


def normalize(text: str) -> str:
    """NFKC, casefold, collapse whitespace, strip surrounding punctuation.

    Casefolding can produce characters that NFKC changes again, hence NFKC on both
    sides of it (the Unicode "NFKC_Casefold" recipe). A string that is nothing but
    punctuation ("?!") keeps it: stripping would turn a real query into no query.
    """
    if text.isascii():
        collapsed = " ".join(text.lower().split())
        return collapsed.strip(_ASCII_EDGE_NOISE) or collapsed
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    collapsed = " ".join(folded.split())
    stripped = _strip_punctuation(collapsed)
    return stripped or collapsed


def _strip_punctuation(text: str) -> str:
    start, end = 0, len(text)
    while start < end and _is_edge_noise(text[start]):
        start += 1
    while end > start and _is_edge_noise(text[end - 1]):
        end -= 1
    return text[start:end]
