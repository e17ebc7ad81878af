"""The `links` table: its schema, and what the stored partitions say (links, their model and index, accuracy).

One Parquet file per inbox file, `tables/links/<partition key>.parquet` (`catalog.links_table`); DuckDB reads
them all as `tables/links/*.parquet`.
"""

from __future__ import annotations


import pyarrow as pa

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.index import stored_index_identity
from pipeline.lake import Lake
from pipeline.training.trained import current_model

STATUSES = ("linked", "unscored", "rejected")


def _column(name: str, type_: pa.DataType, description: str = "") -> pa.Field:
    return pa.field(name, type_, metadata={"description": description} if description else None)


TOP_ENTITY = pa.struct([
    ("kb_index", pa.int64()), ("qid", pa.string()), ("name", pa.string()), ("score", pa.float32()),
    ("text_score", pa.float32()), ("image_score", pa.float32()), ("cross_score", pa.float32()),
])

LINKS_SCHEMA = pa.schema([  # each column's description shows in the UI's column schema
    _column("partition", pa.string(), "the inbox file name"),
    _column("mention_id", pa.string(), "<file>:<record id>; null for a record without a usable id"),
    _column("record_id", pa.string(), "the record's id in the file"),
    _column("record_index", pa.int64(), "position in the file"),
    _column("status", pa.string(), "linked | unscored | rejected"),
    _column("problem", pa.string(), "why unscored or rejected, and notes (image, unknown answer); null when none"),
    _column("mention", pa.string(), "the mention string"),
    _column("sentence", pa.string(), "the sentence it occurs in"),
    _column("description", pa.string(), "the WikiData description appended to the mention text, if any"),
    _column("gold_qid", pa.string(), "the answer, when it is a KB QID"),
    _column("gold_rank", pa.int32(), "1-based among the reranked K; K + 1 = outside; null without a gold"),
    _column("correct", pa.bool_(), "top entity == gold; null without a gold"),
    _column("top_entities", pa.list_(TOP_ENTITY), "best first, at most 10"),
    _column("routing", pa.string(), "JSON: the experts each of the mention's sequences was routed to"),
    _column("link_key", pa.string(), "what the row depends on (reuse after a KB change)"),
    _column("model", pa.string(), "fingerprint of the trained model"),
    _column("checkpoint", pa.string(), "the model's checkpoint folder"),
    _column("encoder", pa.string(), "JSON identity of the CLIP encoder"),
    _column("index", pa.string(), "fingerprint of the entity index"),
    _column("source_file", pa.string(), "inbox/<file>, relative to the dataset"),
    _column("file_hash", pa.string(), "content hash of the file when it was linked"),
    _column("linked_at", pa.string(), "UTC time of the link, ISO 8601"),
])


def linked_partitions(lake: Lake) -> list[str]:
    folder = lake.table_path(catalog.links_table("-")).parent  # tables/links/
    return sorted(p.name[: -len(".parquet")] for p in folder.glob("*.parquet")) if folder.is_dir() else []


def read_links(lake: Lake) -> pa.Table:
    """Every partition's rows as one table (what a user queries: DuckDB reads `tables/links/*.parquet` too)."""
    tables = [lake.read_table(catalog.links_table(key)) for key in linked_partitions(lake)]
    return pa.concat_tables([t.select(LINKS_SCHEMA.names) for t in tables]) if tables else LINKS_SCHEMA.empty_table()


def linking_state(lake: Lake) -> dict:
    """The model and index that links are made with now; a partition made with others is out of date."""
    model = current_model(lake)
    index = stored_index_identity(catalog.retrieval_index_dir(lake))
    if index is None:
        raise MELUserError(f"There is no trained retrieval index at {catalog.retrieval_index_dir(lake)}; materialize "
                           "retrieval_index first.")
    return {"model": model["fingerprint"], "index": index["fingerprint"]}


def linked_file_hashes(lake: Lake) -> dict[str, str]:
    """{content hash of the inbox file: partition} over every linked partition."""
    return {lake.table_extra(catalog.links_table(key)).get("file_hash", ""): key for key in linked_partitions(lake)}


def out_of_date_partitions(lake: Lake) -> dict[str, dict]:
    """Linked partitions whose stored model or index differs from the current ones: {key: stored state}."""
    current = linking_state(lake)
    stale = {}
    for key in linked_partitions(lake):
        stored = lake.table_extra(catalog.links_table(key)).get("state", {})
        if {name: stored.get(name) for name in current} != current:
            stale[key] = stored
    return stale


def stored_rows(lake: Lake, key: str) -> dict[str, dict]:
    name = catalog.links_table(key)
    if not lake.has_table(name):
        return {}
    try:
        table = lake.read_table(name)
    except (OSError, pa.ArrowException):
        return {}
    if table.schema.names != LINKS_SCHEMA.names:
        return {}
    return {row["mention_id"]: row for row in table.to_pylist() if row["mention_id"] is not None}


def accuracy(correct: list) -> dict:
    """Hits@1 over the labelled rows (`correct` is null for the others)."""
    labelled = [value for value in correct if value is not None]
    return {"labelled": len(labelled), "correct": sum(labelled),
            "accuracy": round(sum(labelled) / len(labelled), 4) if labelled else None}


def running_accuracy(lake: Lake) -> dict:
    """Hits@1 over every labelled mention of every linked partition."""
    keys = linked_partitions(lake)
    correct = [value for key in keys
               for value in lake.read_table(catalog.links_table(key), columns=["correct"]).column("correct").to_pylist()]
    return {"partitions": len(keys), **accuracy(correct)}
