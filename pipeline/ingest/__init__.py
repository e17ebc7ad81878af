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

Modules: `layout` (finding the dataset's files), `schemas` (the three tables), `records` (checks of one
record, the quarantine), `reader` (what the KB and mention readers share: images, broken records),
`kb` (entities and the KB change files), `mentions` (mention files, also the inbox's), `stage` (the entry
point: reuse, tables, figures).
"""

from pipeline.ingest.layout import SPLITS, DatasetLayout
from pipeline.ingest.mentions import MentionReader
from pipeline.ingest.records import NIL
from pipeline.ingest.schemas import ENTITIES_SCHEMA, MENTIONS_SCHEMA, QUARANTINE_SCHEMA
from pipeline.ingest.stage import (
    INGEST_VERSION,
    IngestReport,
    IngestSettings,
    ingest_dataset,
)

__all__ = [
    "ENTITIES_SCHEMA", "INGEST_VERSION", "MENTIONS_SCHEMA", "NIL", "QUARANTINE_SCHEMA", "SPLITS", "DatasetLayout",
    "IngestReport", "IngestSettings", "MentionReader", "ingest_dataset",
]
