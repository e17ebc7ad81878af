"""The KB side of a dataset: qid2id, the KB records, the KB change files applied to them, their images."""

from __future__ import annotations

import pyarrow as pa

from pipeline.errors import MELUserError
from pipeline.ingest.reader import RecordReader, first_of_each
from pipeline.ingest.records import (
    REQUIRED_ENTITY_FIELDS,
    optional_text,
    parse_kb_index,
    record_id,
    record_problem,
)
from pipeline.ingest.schemas import ENTITIES_SCHEMA
from pipeline.jsonrecords import read_records

KB_CHANGE_OPS = ("upsert", "remove")


class KBReader(RecordReader):
    """Reads the entities; afterwards `qid2id` is the map the mentions are checked against and `kb_indices`
    the indices of the usable entities."""

    qid2id: dict[str, int]
    kb_indices: set[int]

    def read_entities(self) -> pa.Table:
        self.qid2id = self._read_qid2id()
        file = self.layout.relative(self.layout.kb_file)
        records, broken = read_records(self.layout.kb_file)
        self._quarantine_broken(file, broken)
        sources = [(file, index, record) for index, record in records]
        sources = self._apply_kb_changes(sources)
        qid_of_index = {index: qid for qid, index in self.qid2id.items()}
        rows = first_of_each(sources, lambda source, taken: self._entity_row(*source, qid_of_index, taken),
                             key="kb_index")
        self._attach_images(rows, "image_paths", self.layout.kb_image_dir, file, many=True)
        self.kb_indices = {row["kb_index"] for row in rows}
        for qid, index in sorted(self.qid2id.items()):
            if index not in self.kb_indices:
                self.quarantine.add(
                    self.layout.relative(self.layout.qid2id_file), None, qid, None, "unknown_kb_index",
                    f"qid2id maps {qid} to KB index {index}, which no usable KB record has.", "ignored",
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
            index = parse_kb_index(record.get("id") if isinstance(record, dict) else None)
            if index is not None:
                first.setdefault(index, position)
        for path in self.layout.kb_change_files:
            file = self.layout.relative(path)
            records, broken = read_records(path)
            self._quarantine_broken(file, broken)
            for position, change in records:
                problem = self._apply_change(file, position, change, order, first)
                if problem is not None:
                    changed_qid = str(change.get("qid")) if isinstance(change, dict) else None
                    self.quarantine.add(file, position, changed_qid, "op", "bad_kb_change", problem, "ignored")
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
        problem = record_problem(record, REQUIRED_ENTITY_FIELDS, {"entity_name": str, "desc": str})
        entity_id = record_id(record)
        if problem is None:
            kb_index = parse_kb_index(record["id"])
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
            self.quarantine.add(file, index, entity_id, problem[1], problem[0], problem[2])
            return None
        return dict(
            kb_index=kb_index,
            qid=qid_of_index.get(kb_index) or record.get("qid"),
            name=record["entity_name"].strip(),
            description=optional_text(record.get("desc")),
            attributes=optional_text(record.get("attr")),
            instance=optional_text(record.get("instance")),
            image_paths=list(image_list or []),
            record_index=index,
        )
