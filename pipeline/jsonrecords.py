"""Read the records of a JSON file one by one, so that one bad record costs only itself.

MIMIC-layout files are JSON arrays of objects; users also hand us JSON Lines. When a
file does not parse as a whole, each top-level object is parsed on its own and the
broken ones are reported with their position, instead of losing the whole file.
Bytes that are not UTF-8 are kept as lone surrogates (``surrogateescape``) so the
record holding them can be quarantined by itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A JSON string (with escapes) or a brace: enough to find where top-level objects end.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}]', re.DOTALL)


@dataclass(frozen=True)
class BrokenRecord:
    index: int  # position of the record in the file, 0-based
    line: int  # 1-based line where it starts
    reason: str


def decode_lenient(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def has_non_utf8(value: Any) -> bool:
    """True when a decoded JSON value holds text that was not valid UTF-8."""
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, list):
        return any(has_non_utf8(item) for item in value)
    if isinstance(value, dict):
        return any(has_non_utf8(k) or has_non_utf8(v) for k, v in value.items())
    return False


def read_records(path: Path) -> tuple[list[tuple[int, Any]], list[BrokenRecord]]:
    """Return ``[(index, record)]`` and the records that could not be parsed.

    A top-level object (instead of an array) whose values are records, as some
    re-uploads use (``{"0": {...}, "1": {...}}``), is read as its values in order.
    """
    text = decode_lenient(Path(path).read_bytes())
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _salvage(text)
    if isinstance(data, list):
        return list(enumerate(data)), []
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return list(enumerate(data.values())), []
    if isinstance(data, dict):
        return [(0, data)], []
    return [], [BrokenRecord(0, 1, f"the file holds a JSON {type(data).__name__}, not records")]


def _salvage(text: str) -> tuple[list[tuple[int, Any]], list[BrokenRecord]]:
    """Parse each top-level ``{...}`` span on its own (JSON array or JSON Lines)."""
    records: list[tuple[int, Any]] = []
    broken: list[BrokenRecord] = []
    index = 0
    for start, end in _object_spans(text):
        line = text.count("\n", 0, start) + 1
        if end is None:
            broken.append(BrokenRecord(index, line, "the file ends inside this record (truncated)"))
            break
        try:
            records.append((index, json.loads(text[start:end])))
        except json.JSONDecodeError as error:
            broken.append(BrokenRecord(index, line, f"malformed JSON: {error.msg}"))
        index += 1
    if not records and not broken:
        broken.append(BrokenRecord(0, 1, "no JSON records found"))
    return records, broken


def _object_spans(text: str):
    """Yield (start, end) of each top-level object; end is None if it never closes."""
    depth = 0
    start = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token == "{":
            if depth == 0:
                start = match.start()
            depth += 1
        elif token == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield start, match.end()
    if depth > 0:
        yield start, None
