"""The inbox of a dataset: new mention files that the trained model links, one Dagster partition each.

    <dataset>/inbox/<name>.json        mention records as in the splits (id, sentence, mentions, imgPath, desc);
                                       `answer` is optional: with a KB QID it counts towards the accuracy
    <dataset>/inbox/mention_image/     the images those records name
    <dataset>/inbox/kb/*.json          KB changes (upserts and removals), read by ingestion (`pipeline.ingest`)

A file's partition key is its name. A file is picked up once it is complete: unchanged for
`settle_seconds` (a copy in progress keeps touching it) and not a hidden or temporary name (`.x.json`,
`x.json.part`, `x.json.tmp`: tools that write atomically rename onto the final name).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.hashing import FileHashCache, hash_file
from pipeline.images import ImageCheckCache
from pipeline.ingest import NIL, DatasetLayout, MentionReader
from pipeline.jsonrecords import read_records
from pipeline.lake import Lake

INBOX_DIR = "inbox"
IMAGE_DIR = "mention_image"
KB_CHANGES_DIR = "kb"
SPLIT = "inbox"
# Dagster partition keys may not hold ",", "[", "]" and the like; file names outside this rule are reported.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.json$")


def inbox_dir(dataset_dir: Path | str) -> Path:
    return Path(dataset_dir) / INBOX_DIR


@dataclass(frozen=True)
class InboxFile:
    key: str  # the partition key: the file name
    path: Path
    size: int
    mtime_ns: int

    def settled(self, settle_seconds: float, now: float | None = None) -> bool:
        """Unchanged for `settle_seconds`: a writer still copying it keeps moving its mtime."""
        now = time.time() if now is None else now
        return now - self.mtime_ns / 1e9 >= settle_seconds


@dataclass
class InboxListing:
    files: list[InboxFile] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # name -> why it is not a partition


def list_inbox(dataset_dir: Path | str) -> InboxListing:
    """The mention files in the inbox, by name; names that cannot be partitions are listed with the reason."""
    folder = inbox_dir(dataset_dir)
    listing = InboxListing()
    if not folder.is_dir():
        return listing
    for path in sorted(folder.iterdir()):
        name = path.name
        if not path.is_file() or name.startswith("."):
            continue
        if not name.endswith(".json"):
            if not name.endswith((".part", ".tmp", ".crdownload")):
                listing.ignored[name] = "not a .json file"
            continue
        if not KEY_PATTERN.match(name):
            listing.ignored[name] = ("the name must start with a letter or digit and use only letters, digits, "
                                     "'.', '_' and '-' (it becomes a Dagster partition key)")
            continue
        stat = path.stat()
        listing.files.append(InboxFile(name, path, stat.st_size, stat.st_mtime_ns))
    return listing


@dataclass
class InboxBatch:
    """The usable mentions of one inbox file and an account of every record that is not one."""

    key: str
    file_hash: str
    mentions: pa.Table  # pipeline.ingest.MENTIONS_SCHEMA; split "inbox", mention_id "<key>:<record id>"
    labelled: list[bool]  # per mention row: its answer is a QID of the KB (counts towards accuracy)
    notes: dict[str, list[str]]  # mention_id -> what was odd but did not stop it (image, unknown answer)
    rejected: list[dict]  # record_index, record_id, reason_code, reason: records that cannot be linked
    records: int


def read_inbox_file(lake: Lake, dataset_dir: Path | str, key: str) -> InboxBatch:
    """Validate one inbox file like a split file, with `answer` optional; MELUserError when the file as a
    whole is unusable (missing, not JSON records at all)."""
    if not KEY_PATTERN.match(key):
        raise MELUserError(f"{key!r} is not an inbox file name (see pipeline.linking.inbox.KEY_PATTERN).")
    layout = DatasetLayout.discover(dataset_dir)
    path = inbox_dir(layout.root) / key
    if not path.is_file():
        raise MELUserError(f"The inbox file {path} does not exist (removed since it was registered?).")
    file_hash = hash_file(path)
    records, broken = read_records(path)
    if not records:
        detail = broken[0].reason if broken else "it holds no records"
        raise MELUserError(f"The inbox file {path} cannot be read as mention records: {detail}.")

    entities = lake.read_table(catalog.ENTITIES, columns=["kb_index", "qid"])
    qid2id = dict(zip(entities.column("qid").to_pylist(), entities.column("kb_index").to_pylist()))
    inbox_layout = dataclasses.replace(layout, mention_image_dir=inbox_dir(layout.root) / IMAGE_DIR)
    hashes = FileHashCache(lake.state_path(catalog.FILE_HASHES))
    images = ImageCheckCache(lake.state_path(catalog.IMAGE_CHECKS))
    reader = MentionReader(inbox_layout, hashes, images, qid2id)
    notes: dict[str, list[str]] = {}
    labelled_ids: set[str] = set()
    prepared = []
    for index, record in records:
        record, labelled, note = _with_optional_answer(record, qid2id)
        prepared.append((index, record))
        if isinstance(record, dict) and record.get("id") is not None:
            if labelled:
                labelled_ids.add(str(record["id"]))
            if note:
                notes.setdefault(str(record["id"]), []).append(note)
    file = layout.relative(path)
    try:
        table = reader.read_file(SPLIT, path, prepared, broken)
    finally:  # the file's digests and image verdicts are kept even when reading it fails
        hashes.save()
        images.save()
    record_ids = table.column("record_id").to_pylist()
    mention_ids = [f"{key}:{record_id}" for record_id in record_ids]
    table = table.set_column(table.schema.get_field_index("mention_id"), "mention_id", pa.array(mention_ids))
    for row in reader.quarantine.rows:
        if row["action"] != "dropped" and row["record_id"] is not None:
            notes.setdefault(row["record_id"], []).append(f"{row['reason_code']}: {row['reason']} ({row['action']})")
    rejected = [dict(record_index=row["record_index"], record_id=row["record_id"], reason_code=row["reason_code"],
                     reason=row["reason"]) for row in reader.quarantine.rows
                if row["action"] == "dropped" and row["file"] == file]
    return InboxBatch(
        key=key, file_hash=file_hash, mentions=table,
        labelled=[record_id in labelled_ids for record_id in record_ids],
        notes={f"{key}:{record_id}": notes[record_id] for record_id in record_ids if record_id in notes},
        rejected=rejected, records=len(records) + len(broken),
    )


def _with_optional_answer(record, qid2id: dict[str, int]):
    """(record for the split reader, labelled, note): a missing answer or one outside the KB makes the record
    unlabelled (linked, not scored) instead of quarantined as it would be in a split file."""
    if not isinstance(record, dict):
        return record, False, None
    answer = record.get("answer")
    if isinstance(answer, str) and answer.strip() and answer.strip().lower() != NIL:
        if answer in qid2id:
            return record, True, None
        return {**record, "answer": NIL}, False, f"answer {answer!r} is not a QID of the KB: linked, not scored"
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return {**record, "answer": NIL}, False, None
    return record, False, None  # "nil" or a wrong type: the split reader says what it is
