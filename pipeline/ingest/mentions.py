"""Mention files read against a KB: the dataset's splits at ingestion, an inbox file when linking."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from pipeline.hashing import FileHashCache
from pipeline.images import ImageCheckCache
from pipeline.ingest.layout import DatasetLayout
from pipeline.ingest.reader import RecordReader, first_of_each
from pipeline.ingest.records import (
    NIL,
    REQUIRED_MENTION_FIELDS,
    optional_text,
    record_id,
    record_problem,
)
from pipeline.ingest.schemas import MENTIONS_SCHEMA
from pipeline.jsonrecords import read_records

MENTION_FIELD_TYPES = {"sentence": str, "mentions": str, "answer": str, "entities": str, "imgPath": str, "desc": str}


class MentionReader(RecordReader):
    """Reads mention files; a gold QID must be in `qid2id` and map to one of `usable_indices` (by default
    every index of `qid2id`: a KB already ingested, as the inbox has it)."""

    def __init__(self, layout: DatasetLayout, hashes: FileHashCache, images: ImageCheckCache,
                 qid2id: dict[str, int], usable_indices: Iterable[int] | None = None):
        super().__init__(layout, hashes, images)
        self.qid2id = dict(qid2id)
        self.kb_indices = set(self.qid2id.values() if usable_indices is None else usable_indices)

    def read_splits(self) -> pa.Table:
        tables = [self.read_file(split, path, *read_records(path)) for split, path in self.layout.split_files.items()]
        return pa.concat_tables(tables) if tables else MENTIONS_SCHEMA.empty_table()

    def read_file(self, split: str, path: Path, records: list, broken: list) -> pa.Table:
        """The usable mentions of one file's parsed `records`; everything else goes to the quarantine."""
        file = self.layout.relative(path)
        self._quarantine_broken(file, broken)
        rows = first_of_each(records, lambda item, taken: self._mention_row(split, file, *item, taken),
                             key="record_id")
        self._attach_images(rows, "image_path", self.layout.mention_image_dir, None, many=False)
        return pa.Table.from_pylist(rows, schema=MENTIONS_SCHEMA)

    def _mention_row(self, split, file, index, record, seen) -> dict | None:
        problem = record_problem(record, REQUIRED_MENTION_FIELDS, MENTION_FIELD_TYPES)
        mention_record_id = record_id(record)
        if problem is None and mention_record_id in seen:
            problem = ("duplicate_id", "id",
                       f"id {mention_record_id} already used by record {seen[mention_record_id]} of {file}.")
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
            self.quarantine.add(file, index, mention_record_id, problem[1], problem[0], problem[2])
            return None
        self._flag_empty_text(file, index, mention_record_id, mention, record["sentence"].strip())
        return dict(
            mention_id=f"{split}:{mention_record_id}",
            split=split,
            record_id=mention_record_id,
            mention=mention,
            sentence=record["sentence"].strip(),
            gold_name=gold_name or None,
            gold_qid=None if is_nil else answer,
            gold_index=None if is_nil else self.qid2id[answer],
            is_nil=is_nil,
            description=optional_text(record.get("desc")),
            image_path=image_name or None,
            source_file=file,
            record_index=index,
        )

    def _flag_empty_text(self, file, index, mention_record_id, mention: str, sentence: str) -> None:
        """A kept record with one of its two texts empty: recorded, so the counts show it (see the package
        docstring)."""
        if not mention:
            self.quarantine.add(file, index, mention_record_id, "mentions", "empty_text",
                                "the mention text is empty; kept, linked on its sentence.", "kept_linked_on_sentence")
        if not sentence:
            self.quarantine.add(file, index, mention_record_id, "sentence", "empty_text",
                                "the sentence is empty; kept, linked on its mention text.", "kept_without_sentence")
