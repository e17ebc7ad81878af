"""Ingest a dataset in the MIMIC layout (WikiMEL, RichpediaMEL, WikiDiverse) into Parquet.

Layout::

    <name>_train.json, <name>_dev.json, <name>_test.json   mention records
    kb_entity.json                                         KB records
    qid2id.json                                            QID -> KB index
    kb_image/, mention_image/ (or mention_images/)         images

Every record is validated. A record that cannot be used at all (malformed, missing or
mistyped fields, neither mention nor sentence text, non-UTF-8 text, duplicate id, gold
QID not in the KB, an image path that escapes the dataset directory) is dropped and
written to the quarantine table with the file, the record and the reason. An image that
is missing or corrupt does not make its record unusable: the record is kept as
text-only (flagged, as the paper feeds a zero image) and the image problem goes to the
quarantine table with action ``kept_without_image``. ``nil`` answers are kept but
marked, so that training leaves them out and the counts show them.

Empty text. Dropping a test mention would take it out of the evaluation's denominator
(RichpediaMEL's test split has one whose mention string is only whitespace), so a record
with some text is kept: an empty mention string (reason ``empty_text``, field
``mentions``, action ``kept_linked_on_sentence``) leaves its ``mention`` column empty,
and its encoder text (``mention [SEP] sentence [SEP] description``, empty parts left
out) is its sentence; its WikiData lookup is an empty search (counted as
``empty_search``), so it is offered no description. An empty sentence (field
``sentence``, action ``kept_without_sentence``) leaves the mention string as its text.
Only a record with neither is dropped.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import MELUserError
from pipeline.hashing import FileHashCache, hash_strings, list_files, stat_fingerprint
from pipeline.images import ImageCheckCache, find_image_file, resolve_inside
from pipeline.jsonrecords import has_non_utf8, read_records
from pipeline.lake import Lake

INGEST_VERSION = "1"  # bump when the reader's output changes for the same input
SPLITS = ("train", "dev", "test")
TABLES = ("mentions", "entities", "quarantine")
NIL = "nil"

log = logging.getLogger(__name__)

MENTIONS_SCHEMA = pa.schema(
    [
        ("mention_id", pa.string()),  # "<split>:<record id>", stable across runs
        ("split", pa.string()),
        ("record_id", pa.string()),
        ("mention", pa.string()),
        ("sentence", pa.string()),
        ("gold_name", pa.string()),
        ("gold_qid", pa.string()),  # null for nil
        ("gold_index", pa.int64()),  # KB index; null for nil
        ("is_nil", pa.bool_()),
        ("description", pa.string()),  # the record's own `desc`, when it has one
        ("image_path", pa.string()),  # relative to the dataset directory; null without image
        ("image_digest", pa.string()),
        ("has_image", pa.bool_()),
        ("source_file", pa.string()),
        ("record_index", pa.int64()),
    ]
)

ENTITIES_SCHEMA = pa.schema(
    [
        ("kb_index", pa.int64()),
        ("qid", pa.string()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("attributes", pa.string()),
        ("instance", pa.string()),
        ("image_paths", pa.list_(pa.string())),  # usable images only, relative paths
        ("image_digests", pa.list_(pa.string())),
        ("has_image", pa.bool_()),
        ("record_index", pa.int64()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("file", pa.string()),  # relative to the dataset directory
        ("record_index", pa.int64()),  # position in the file, 0-based; null for the whole file
        ("record_id", pa.string()),
        ("field", pa.string()),
        ("reason_code", pa.string()),
        ("reason", pa.string()),
        # dropped | kept_without_image | kept_linked_on_sentence | kept_without_sentence | ignored
        ("action", pa.string()),
    ]
)

KB_CHANGES_DIR = "inbox/kb"  # KB changes: records {"op": "upsert" | "remove", ...}, see _Reader._apply_kb_changes
KB_CHANGE_OPS = ("upsert", "remove")
REQUIRED_MENTION_FIELDS = ("id", "sentence", "mentions", "answer")
REQUIRED_ENTITY_FIELDS = ("id", "entity_name")


@dataclass
class DatasetLayout:
    root: Path
    split_files: dict[str, Path]
    kb_file: Path
    qid2id_file: Path
    kb_image_dir: Path
    mention_image_dir: Path
    kb_change_files: list[Path] = field(default_factory=list)  # inbox/kb/*.json, applied in name order

    @classmethod
    def discover(cls, root: Path | str) -> "DatasetLayout":
        root = Path(root)
        if not root.is_dir():
            raise MELUserError(f"The dataset directory {root} does not exist.")
        root = root.resolve()
        split_files = {split: _find_split_file(root, split) for split in SPLITS}
        kb_file, qid2id_file = root / "kb_entity.json", root / "qid2id.json"
        for required in (kb_file, qid2id_file, root / "kb_image"):
            if not required.exists():
                raise MELUserError(f"The dataset is missing {required}.")
        mention_image_dir = next(
            (root / name for name in ("mention_image", "mention_images") if (root / name).is_dir()),
            None,
        )
        if mention_image_dir is None:
            raise MELUserError(f"The dataset is missing {root / 'mention_image'} (or mention_images).")
        changes = sorted((root / KB_CHANGES_DIR).glob("*.json")) if (root / KB_CHANGES_DIR).is_dir() else []
        return cls(root, split_files, kb_file, qid2id_file, root / "kb_image", mention_image_dir, changes)

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def input_files(self) -> list[Path]:
        """The files ingestion reads; other files in the directory do not matter."""
        files = [*self.split_files.values(), self.kb_file, self.qid2id_file, *self.kb_change_files]
        return files + list_files(self.kb_image_dir) + list_files(self.mention_image_dir)

    def kb_files(self) -> list[Path]:
        """The input files of the KB side alone: a change to these alone leaves the mentions as they are."""
        return [self.kb_file, self.qid2id_file, *self.kb_change_files, *list_files(self.kb_image_dir)]

    def change_fingerprints(self) -> dict[str, str]:
        """Cheap fingerprints (names, sizes, mtimes) of the KB files and of the other input files, apart: what
        changed tells a KB-only refresh from a full one."""
        kb_files = set(self.kb_files())
        return {"kb": stat_fingerprint(kb_files),
                "mentions": stat_fingerprint([path for path in self.input_files() if path not in kb_files])}


def _find_split_file(root: Path, split: str) -> Path:
    matches = sorted(root.glob(f"*_{split}.json"))
    if not matches:
        raise MELUserError(f"The dataset directory {root} has no *_{split}.json file.")
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise MELUserError(f"The dataset directory {root} has several {split} files ({names}); keep one.")
    return matches[0]


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


@dataclass
class IngestReport:
    reused: bool
    fingerprint: str
    stats: dict[str, Any]


def ingest_dataset(dataset_dir: Path | str, lake: Lake, *, force: bool = False, logger=log) -> IngestReport:
    """Validate the dataset and write the mentions, entities and quarantine tables.

    Reuses the stored tables when every input file has the same content as last time.
    """
    layout = DatasetLayout.discover(dataset_dir)
    hashes = FileHashCache(lake.state_path("file_hashes.parquet"))
    fingerprint = hash_strings([INGEST_VERSION, hashes.fingerprint(layout.input_files(), layout.root)])
    hashes.save()
    if not force and lake.tables_up_to_date(list(TABLES), fingerprint):
        logger.info(f"Inputs unchanged (fingerprint {fingerprint[:12]}): reusing the stored tables.")
        return IngestReport(True, fingerprint, lake.table_extra("mentions"))

    logger.info(f"Reading {layout.root} ({hashes.hashed} files hashed anew).")
    images = ImageCheckCache(lake.state_path("image_checks.parquet"))
    reader = _Reader(layout, hashes, images)
    entities = reader.read_entities()
    mentions = reader.read_mentions()
    images.save()
    stats = reader.stats(mentions, entities)
    stats["images_decoded"] = images.checked
    for name, table in (("entities", entities), ("mentions", mentions), ("quarantine", reader.quarantine.table())):
        lake.write_table(name, table, fingerprint, extra=stats)
    logger.info(
        f"Wrote {stats['mentions']} mentions, {stats['entities']} entities, "
        f"{stats['quarantined_records']} quarantined records."
    )
    return IngestReport(False, fingerprint, stats)


class _Reader:
    def __init__(self, layout: DatasetLayout, hashes: FileHashCache, images: ImageCheckCache):
        self.layout = layout
        self.hashes = hashes
        self.images = images
        self.quarantine = Quarantine()
        self.qid2id: dict[str, int] = {}
        self.kb_indices: set[int] = set()

    # -- KB ------------------------------------------------------------------------------
    def read_entities(self) -> pa.Table:
        self.qid2id = self._read_qid2id()
        file = self.layout.relative(self.layout.kb_file)
        records, broken = read_records(self.layout.kb_file)
        self._quarantine_broken(file, broken)
        sources = [(file, index, record) for index, record in records]
        sources = self._apply_kb_changes(sources)
        qid_of_index = {index: qid for qid, index in self.qid2id.items()}
        rows, seen = [], {}
        for source_file, index, record in sources:
            row = self._entity_row(source_file, index, record, qid_of_index, seen)
            if row is not None:
                seen[row["kb_index"]] = index
                rows.append(row)
        self._attach_images(rows, "image_paths", self.layout.kb_image_dir, file, many=True)
        self.kb_indices = {row["kb_index"] for row in rows}
        for qid, kb_index in sorted(self.qid2id.items()):
            if kb_index not in self.kb_indices:
                self.quarantine.add(
                    self.layout.relative(self.layout.qid2id_file), None, qid, None, "unknown_kb_index",
                    f"qid2id maps {qid} to KB index {kb_index}, which no usable KB record has.", "ignored",
                )
        rows.sort(key=lambda row: row["kb_index"])
        return pa.Table.from_pylist(rows, schema=ENTITIES_SCHEMA)

    def _apply_kb_changes(self, sources: list[tuple[str, int, object]]) -> list[tuple[str, int, object]]:
        """Apply the KB change files in name order to the KB records (and to qid2id).

        A change record is `{"op": "upsert", "qid": ..., "entity_name": ..., "desc": ..., "image_list": [...]}`
        (an entity's whole new record; `id` optional: the entity's index when the QID is known, else the next
        free one) or `{"op": "remove", "qid": ...}`. A change that cannot be applied is quarantined as
        `bad_kb_change` and the KB stays as it was for that entity.
        """
        order: list = list(sources)
        first: dict[int, int] = {}  # KB index -> position in `order` of the first record holding it
        for position, (_, _, record) in enumerate(order):
            index = _kb_index(record.get("id") if isinstance(record, dict) else None)
            if index is not None:
                first.setdefault(index, position)
        for path in self.layout.kb_change_files:
            file = self.layout.relative(path)
            records, broken = read_records(path)
            self._quarantine_broken(file, broken)
            for position, change in records:
                problem = self._apply_change(file, position, change, order, first)
                if problem is not None:
                    record_id = str(change.get("qid")) if isinstance(change, dict) else None
                    self.quarantine.add(file, position, record_id, "op", "bad_kb_change", problem, "ignored")
        return [source for source in order if source is not None]

    def _apply_change(self, file: str, position: int, change, order: list, first: dict[int, int]) -> str | None:
        """Apply one change record; the sentence saying why it cannot be applied, else None."""
        if not isinstance(change, dict):
            return f"the change is a JSON {type(change).__name__}, not an object."
        op, qid = change.get("op"), change.get("qid")
        if op not in KB_CHANGE_OPS:
            return f"op {op!r} is not one of {', '.join(KB_CHANGE_OPS)}."
        if not isinstance(qid, str) or not qid.strip():
            return "the change names no QID (field qid)."
        known = self.qid2id.get(qid)
        if op == "remove":
            if known is None:
                return f"remove {qid}: the KB has no such entity."
            if known in first:
                order[first.pop(known)] = None
            del self.qid2id[qid]
            return None
        index = change.get("id", known)
        if index is None:
            index = max([*first, *self.qid2id.values(), -1]) + 1
        if isinstance(index, bool) or not isinstance(index, int):
            return f"upsert {qid}: id {index!r} is not an integer KB index."
        if known is not None and known != index:
            return f"upsert {qid}: the KB has it at index {known}, not {index}."
        holder = next((q for q, i in self.qid2id.items() if i == index and q != qid), None)
        if holder is not None:
            return f"upsert {qid}: index {index} belongs to {holder}."
        record = {key: value for key, value in change.items() if key != "op"}
        source = (file, position, {**record, "id": index, "type": record.get("type", "entity")})
        if index in first:
            order[first[index]] = source
        else:
            first[index] = len(order)
            order.append(source)
        self.qid2id[qid] = index
        return None

    def _read_qid2id(self) -> dict[str, int]:
        records, broken = read_records(self.layout.qid2id_file)
        path = self.layout.qid2id_file
        if broken or len(records) != 1 or not isinstance(records[0][1], dict):
            detail = broken[0].reason if broken else "it is not one JSON object"
            raise MELUserError(f"{path} cannot be read as a QID -> index map: {detail}.")
        mapping = {}
        for qid, index in records[0][1].items():
            if isinstance(index, bool) or not isinstance(index, int):
                self.quarantine.add(self.layout.relative(path), None, str(qid), qid, "wrong_type",
                                    f"qid2id maps {qid} to {index!r}, not an integer index.", "ignored")
                continue
            mapping[qid] = index
        return mapping

    def _entity_row(self, file, index, record, qid_of_index, seen) -> dict | None:
        problem = _record_problem(record, REQUIRED_ENTITY_FIELDS, {"entity_name": str, "desc": str})
        record_id = _record_id(record)
        if problem is None:
            kb_index = _kb_index(record["id"])
            if kb_index is None:
                problem = ("wrong_type", "id", f"KB id {record['id']!r} is not an integer index.")
            elif kb_index in seen:
                problem = ("duplicate_id", "id", f"KB index {kb_index} already used by record {seen[kb_index]}.")
            elif not record["entity_name"].strip():
                problem = ("empty_text", "entity_name", "entity_name is empty.")
            elif record.get("qid") and kb_index in qid_of_index and record["qid"] != qid_of_index[kb_index]:
                problem = ("qid_mismatch", "qid",
                           f"record says {record['qid']} but qid2id maps {qid_of_index[kb_index]} to index {kb_index}.")
        image_list = record.get("image_list") if isinstance(record, dict) else None
        if problem is None and image_list is not None and not (
            isinstance(image_list, list) and all(isinstance(name, str) for name in image_list)
        ):
            problem = ("wrong_type", "image_list", "image_list is not a list of file names.")
        if problem is None:
            problem = self._escaping_path(self.layout.kb_image_dir, image_list or [], "image_list")
        if problem is not None:
            self.quarantine.add(file, index, record_id, problem[1], problem[0], problem[2])
            return None
        return dict(
            kb_index=kb_index,
            qid=qid_of_index.get(kb_index) or record.get("qid"),
            name=record["entity_name"].strip(),
            description=_optional_text(record.get("desc")),
            attributes=_optional_text(record.get("attr")),
            instance=_optional_text(record.get("instance")),
            image_paths=list(image_list or []),
            record_index=index,
        )

    # -- mentions -----------------------------------------------------------------------
    def read_mentions(self) -> pa.Table:
        tables = [self.read_file(split, path, *read_records(path)) for split, path in self.layout.split_files.items()]
        return pa.concat_tables(tables) if tables else MENTIONS_SCHEMA.empty_table()

    def read_file(self, split: str, path: Path, records: list, broken: list) -> pa.Table:
        """The usable mentions of one file's parsed `records`; everything else goes to the quarantine."""
        file = self.layout.relative(path)
        self._quarantine_broken(file, broken)
        rows, seen = [], {}
        for index, record in records:
            row = self._mention_row(split, file, index, record, seen)
            if row is not None:
                seen[row["record_id"]] = index
                rows.append(row)
        self._attach_images(rows, "image_path", self.layout.mention_image_dir, None, many=False)
        return pa.Table.from_pylist(rows, schema=MENTIONS_SCHEMA)

    def _mention_row(self, split, file, index, record, seen) -> dict | None:
        types = {"sentence": str, "mentions": str, "answer": str, "entities": str, "imgPath": str, "desc": str}
        problem = _record_problem(record, REQUIRED_MENTION_FIELDS, types)
        record_id = _record_id(record)
        if problem is None and record_id in seen:
            problem = ("duplicate_id", "id", f"id {record_id} already used by record {seen[record_id]} of {file}.")
        if problem is None:
            try:
                mention = urllib.parse.unquote(record["mentions"], errors="strict").strip()
                gold_name = urllib.parse.unquote(record.get("entities") or "", errors="strict").strip()
            except UnicodeDecodeError:
                mention, gold_name = "", ""
                problem = ("non_utf8", "mentions", "URL-quoted text does not decode as UTF-8.")
        if problem is None and not mention and not record["sentence"].strip():
            problem = ("empty_text", "mentions", "neither the mention nor the sentence has text.")
        answer = record.get("answer", "") if isinstance(record, dict) else ""
        is_nil = isinstance(answer, str) and answer.strip().lower() == NIL
        if problem is None and not is_nil and self.qid2id.get(answer) not in self.kb_indices:
            where = "qid2id.json" if answer not in self.qid2id else "the usable KB records"
            problem = ("unknown_gold_qid", "answer", f"gold QID {answer!r} is not in {where}.")
        image_name = (record.get("imgPath") or "").strip() if isinstance(record, dict) else ""
        if problem is None and image_name:
            problem = self._escaping_path(self.layout.mention_image_dir, [image_name], "imgPath")
        if problem is not None:
            self.quarantine.add(file, index, record_id, problem[1], problem[0], problem[2])
            return None
        self._flag_empty_text(file, index, record_id, mention, record["sentence"].strip())
        return dict(
            mention_id=f"{split}:{record_id}",
            split=split,
            record_id=record_id,
            mention=mention,
            sentence=record["sentence"].strip(),
            gold_name=gold_name or None,
            gold_qid=None if is_nil else answer,
            gold_index=None if is_nil else self.qid2id[answer],
            is_nil=is_nil,
            description=_optional_text(record.get("desc")),
            image_path=image_name or None,
            source_file=file,
            record_index=index,
        )

    def _flag_empty_text(self, file, index, record_id, mention: str, sentence: str) -> None:
        """A kept record with one of its two texts empty: recorded, so the counts show it (see the docstring)."""
        if not mention:
            self.quarantine.add(file, index, record_id, "mentions", "empty_text",
                                "the mention text is empty; kept, linked on its sentence.", "kept_linked_on_sentence")
        if not sentence:
            self.quarantine.add(file, index, record_id, "sentence", "empty_text",
                                "the sentence is empty; kept, linked on its mention text.", "kept_without_sentence")

    # -- shared -------------------------------------------------------------------------
    def _escaping_path(self, image_dir: Path, names: list[str], field_name: str):
        for name in names:
            if resolve_inside(image_dir, name) is None:
                return ("path_escape", field_name,
                        f"image path {name!r} points outside {self.layout.relative(image_dir)}/.")
        return None

    def _attach_images(self, rows, column, image_dir, kb_file, many):
        """Resolve, hash and validate images; keep the usable ones, report the rest."""
        files: dict[str, Path] = {}
        resolved: list[list[tuple[str, Path]]] = []
        for row in rows:
            names = row[column] if many else ([row[column]] if row[column] else [])
            paths = [(name, find_image_file(image_dir, name)) for name in names]
            resolved.append(paths)
            for _, path in paths:
                if path.is_file():
                    files.setdefault(str(path), path)
        digest_of = {key: self.hashes.digest(path) for key, path in files.items()}
        problems = self.images.check_many({digest_of[key]: path for key, path in files.items()})
        for row, paths in zip(rows, resolved):
            usable, digests = [], []
            for name, path in paths:
                digest = digest_of.get(str(path))
                problem = "image file does not exist" if digest is None else problems[digest]
                if problem is None:
                    usable.append(self.layout.relative(path))
                    digests.append(digest)
                else:
                    file = kb_file or row["source_file"]
                    record_id = str(row["kb_index"]) if many else row["record_id"]
                    action = "ignored" if many else "kept_without_image"
                    self.quarantine.add(file, row["record_index"], record_id,
                                        "image_list" if many else "imgPath", "bad_image",
                                        f"{self.layout.relative(path)}: {problem}.", action)
            if many:
                row["image_paths"], row["image_digests"] = usable, digests
            else:
                row["image_path"] = usable[0] if usable else None
                row["image_digest"] = digests[0] if digests else None
            row["has_image"] = bool(usable)

    def _quarantine_broken(self, file, broken):
        for item in broken:
            self.quarantine.add(file, item.index, None, None, "malformed_json",
                                f"record {item.index} (line {item.line}): {item.reason}.")

    def stats(self, mentions: pa.Table, entities: pa.Table) -> dict[str, Any]:
        m = mentions.to_pydict()
        splits = Counter(m["split"])
        nil_by_split = Counter(s for s, nil in zip(m["split"], m["is_nil"]) if nil)
        dropped = [r for r in self.quarantine.rows if r["action"] == "dropped"]
        return {
            "mentions": mentions.num_rows,
            "entities": entities.num_rows,
            **{f"mentions_{split}": splits.get(split, 0) for split in SPLITS},
            **{f"nil_{split}": nil_by_split.get(split, 0) for split in SPLITS},
            "mentions_without_image": m["has_image"].count(False),
            "entities_without_image": entities.column("has_image").to_pylist().count(False),
            "quarantined_records": len(dropped),
            "quarantine_rows": len(self.quarantine.rows),
            "quarantine_by_reason": dict(sorted(Counter(r["reason_code"] for r in self.quarantine.rows).items())),
            "dataset_dir": str(self.layout.root),
        }


class MentionReader(_Reader):
    """Reads mention files against a KB already ingested (`qid2id` from the entities table): the inbox."""

    def __init__(self, layout: DatasetLayout, hashes: FileHashCache, images: ImageCheckCache,
                 qid2id: dict[str, int]):
        super().__init__(layout, hashes, images)
        self.qid2id = dict(qid2id)
        self.kb_indices = set(self.qid2id.values())

    def read_file(self, split: str, path: Path, records: list, broken: list) -> pa.Table:
        try:
            return super().read_file(split, path, records, broken)
        finally:
            self.hashes.save()
            self.images.save()


def _kb_index(value) -> int | None:
    """A KB record's `id` as an integer KB index (an int, or a string of digits), else None."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _record_id(record) -> str | None:
    if isinstance(record, dict) and isinstance(record.get("id"), (int, str)) and not isinstance(record.get("id"), bool):
        return str(record["id"])
    return None


def _record_problem(record, required, types) -> tuple[str, str | None, str] | None:
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


def _optional_text(value) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
