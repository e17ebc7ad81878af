"""The columns of the three tables ingestion writes: mentions, entities, quarantine."""

from __future__ import annotations

import pyarrow as pa

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
