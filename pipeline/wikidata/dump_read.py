"""Reading a WikiData JSON dump: its lines as a stream, each entity parsed as far as search needs.

The official format is one JSON array with one entity per line: `[`, then
`{...},` lines, then `]` (JSON Lines without the brackets is read too). The file is
read as a stream (`.json`, `.json.gz` or `.json.bz2`), so memory stays flat however
large the dump is.

Only what search needs is parsed: the official dump writes `claims` (and `sitelinks`)
after `labels`, `descriptions` and `aliases`, and they are most of each line's bytes,
so the line is parsed up to `,"claims":` when that prefix holds all the term fields
(the full line is parsed otherwise). A JSON string cannot contain `,"claims":`
unescaped, so the cut never falls inside a value.

Faults are counted, never fatal: a line that is not JSON or not an entity
(`corrupt_line`), properties, lexemes and other non-item entities, items with no label
or alias in the language. A compressed file that ends early (or a `[` without its
`]`) stops the read: what was read is kept and the run says "truncated after N lines".

A dump's fingerprint is the file size plus a hash of its first and last MiB, which
also catches a gzip/bzip2 trailer (checksum, length) that changed.
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import MELUserError
from pipeline.hashing import hash_strings, new_hasher
from pipeline.wikidata.normalize import normalize

OPENERS = {".json.gz": gzip.open, ".json.bz2": bz2.open, ".json": open}
FINGERPRINT_SAMPLE_BYTES = 1 << 20
MAX_EXAMPLES = 5
LABEL, ALIAS = 0, 1
TERM_FIELDS = frozenset({"type", "id", "labels", "descriptions", "aliases"})
QID = re.compile(r"^Q[1-9][0-9]{0,11}$")
FALLBACK_LANGUAGE = "mul"  # WikiData's language-independent labels and aliases


@dataclass
class DumpReadStats:
    lines_read: int = 0
    items_indexed: int = 0
    terms_indexed: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated_after_lines: int | None = None
    truncation: str | None = None  # what ended the read early
    examples: list[str] = field(default_factory=list)  # the first few skipped lines, with why
    seconds: float = 0.0

    def skip(self, reason: str, line_number: int, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES and reason == "corrupt_line":
            self.examples.append(f"line {line_number}: {detail}"[:200])

    def as_dict(self) -> dict:
        return {
            "lines_read": self.lines_read,
            "items_indexed": self.items_indexed,
            "terms_indexed": self.terms_indexed,
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "truncated_after_lines": self.truncated_after_lines,
            "truncation": self.truncation,
            "examples": self.examples,
            "seconds": round(self.seconds, 3),
            "lines_per_second": round(self.lines_read / self.seconds, 1) if self.seconds else None,
        }


def dump_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in OPENERS:
        if name.endswith(suffix):
            return suffix
    raise MELUserError(
        f"The WikiData dump {path} is not a .json, .json.gz or .json.bz2 file (setting `dump_path`)."
    )


def check_dump_path(path: Path) -> Path:
    if not path.is_file():
        raise MELUserError(f"The WikiData dump {path} does not exist (setting `dump_path`).")
    dump_suffix(path)
    return path


def dump_fingerprint(path: Path) -> str:
    """Size plus a hash of the first and last MiB: cheap, and it changes with the content."""
    size = path.stat().st_size
    hasher = new_hasher()
    with open(path, "rb") as f:
        hasher.update(f.read(FINGERPRINT_SAMPLE_BYTES))
        f.seek(max(0, size - FINGERPRINT_SAMPLE_BYTES))
        hasher.update(f.read(FINGERPRINT_SAMPLE_BYTES))
    return hash_strings([str(size), hasher.hexdigest()])


def iter_lines(path: Path, stats: DumpReadStats) -> Iterator[tuple[int, bytes]]:
    """(line number, stripped line) for every entity line; counts lines and spots truncation."""
    suffix = dump_suffix(path)
    first = last = b""
    with OPENERS[suffix](path, "rb") as stream:
        try:
            for raw in stream:
                stats.lines_read += 1
                line = raw.strip()
                if not line:
                    continue
                first, last = first or line, line
                if line in (b"[", b"]"):
                    continue
                yield stats.lines_read, line.removesuffix(b",")
        except (EOFError, zlib.error, OSError) as error:  # gzip.BadGzipFile and bz2's errors are OSErrors
            if stats.lines_read == 0:
                raise MELUserError(f"The WikiData dump {path} cannot be read as a {suffix} file ({error}).") from None
            stats.truncated_after_lines, stats.truncation = stats.lines_read, f"{type(error).__name__}: {error}"
            return
    if first == b"[" and last != b"]":
        stats.truncated_after_lines, stats.truncation = stats.lines_read, "the closing ']' is missing"


def parse_entity(line: bytes):
    """The entity on one dump line, parsed only as far as search needs when the layout allows."""
    cut = line.find(b',"claims":')
    if cut > 0:
        try:
            head = json.loads(line[:cut] + b"}")
        except ValueError:
            head = None
        if isinstance(head, dict) and TERM_FIELDS <= head.keys():
            return head
    return json.loads(line)


def skip_reason(entity) -> str | None:
    """None for an item to index, else why the line is skipped."""
    if not isinstance(entity, dict) or "type" not in entity or "id" not in entity:
        return "corrupt_line"
    kind = entity["type"]
    if kind == "item":
        return None if isinstance(entity["id"], str) and QID.match(entity["id"]) else "corrupt_line"
    return kind if kind in ("property", "lexeme") else "other_entity"


def item_terms(entity: dict, language: str) -> tuple[str | None, str | None, dict[str, int]]:
    """(label, description, {normalized term: best match rank}) of an item in `language`."""
    labels, aliases = _mapping(entity.get("labels")), _mapping(entity.get("aliases"))
    terms: dict[str, int] = {}
    label = None
    for code in (language, FALLBACK_LANGUAGE):
        text = _value(labels.get(code))
        if text:
            label = label or text
            _add_term(terms, text, LABEL)
    for code in (language, FALLBACK_LANGUAGE):
        entries = aliases.get(code)
        for entry in entries if isinstance(entries, list) else ():
            text = _value(entry)
            if text:
                _add_term(terms, text, ALIAS)
    description = _value(_mapping(entity.get("descriptions")).get(language))
    return label, description, terms


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}  # the dumps write an empty map as []


def _value(term) -> str | None:
    value = term.get("value") if isinstance(term, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def _add_term(terms: dict[str, int], text: str, rank: int) -> None:
    key = normalize(text)
    if key and rank < terms.get(key, ALIAS + 1):
        terms[key] = rank
