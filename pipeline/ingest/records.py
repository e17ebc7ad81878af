"""Checks of one dataset record, and the quarantine that collects what cannot be used and why."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.ingest.schemas import QUARANTINE_SCHEMA
from pipeline.jsonrecords import has_non_utf8

NIL = "nil"
REQUIRED_MENTION_FIELDS = ("id", "sentence", "mentions", "answer")
REQUIRED_ENTITY_FIELDS = ("id", "entity_name")


@dataclass
class Quarantine:
    rows: list[dict] = field(default_factory=list)

    def add(self, file, index, record_id, field_name, code, reason, action="dropped"):
        self.rows.append(
            dict(file=file, record_index=index, record_id=record_id, field=field_name,
                 reason_code=code, reason=reason, action=action)
        )

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=QUARANTINE_SCHEMA)


def parse_kb_index(value) -> int | None:
    """A KB record's `id` as an integer KB index (an int, or a string of digits), else None."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def record_id(record) -> str | None:
    if isinstance(record, dict) and isinstance(record.get("id"), (int, str)) and not isinstance(record.get("id"), bool):
        return str(record["id"])
    return None


def record_problem(record, required, types) -> tuple[str, str | None, str] | None:
    """(reason_code, field, sentence) for a record whose shape is unusable, else None."""
    if not isinstance(record, dict):
        return ("wrong_type", None, f"the record is a JSON {type(record).__name__}, not an object.")
    missing = [name for name in required if record.get(name) is None]
    if missing:
        return ("missing_field", missing[0], f"missing field(s): {', '.join(missing)}.")
    for name, expected in types.items():
        value = record.get(name)
        if value is not None and not isinstance(value, expected):
            return ("wrong_type", name, f"field {name} is a {type(value).__name__}, not a {expected.__name__}.")
    if isinstance(record["id"], bool) or not isinstance(record["id"], (int, str)) or str(record["id"]).strip() == "":
        return ("wrong_type", "id", f"id {record['id']!r} is not an integer or a non-empty string.")
    bad = next((name for name, value in record.items() if has_non_utf8(value)), None)
    if bad is not None:
        return ("non_utf8", bad, f"field {bad} holds bytes that are not valid UTF-8.")
    return None


def optional_text(value) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
