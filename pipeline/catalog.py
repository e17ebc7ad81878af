"""Every artifact the pipeline stores in the lake, named once: tables, feature stores, indexes, caches, runs.

A stage reads and writes its artifacts through these names and paths only; where an artifact is an asset's
output, the asset has the same name. Paths are under `Lake.root` (see `pipeline.lake` for the layout).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.lake import Lake

# -- tables: tables/<name>.parquet --------------------------------------------------------------------------
MENTIONS = "mentions"
ENTITIES = "entities"
QUARANTINE = "quarantine"
INGEST_TABLES = (MENTIONS, ENTITIES, QUARANTINE)
WIKIDATA_CANDIDATES = "wikidata_candidates"
WIKIDATA_FAILURES = "wikidata_failures"
WIKIDATA_TABLES = (WIKIDATA_CANDIDATES, WIKIDATA_FAILURES)
MENTION_DESCRIPTIONS = "mention_descriptions"
MENTION_CANDIDATES = "mention_candidates"
RETRIEVAL_CANDIDATES = "retrieval_candidates"
PREDICTIONS = "predictions"
LINKS = "links"  # partitioned: tables/links/<partition key>.parquet


def links_table(partition: str) -> str:
    """The table name of one inbox partition's links."""
    return f"{LINKS}/{partition}"


# -- feature stores: features/<name>/ ------------------------------------------------------------------------
ENTITY_FEATURES = "entity_features"
MENTION_FEATURES = "mention_features"
KB_SHARD_STORES = "entity_feature_shards"  # features/entity_feature_shards/<shard>-of-<count>/


def feature_store_dir(lake: Lake, name: str) -> Path:
    return lake.root / "features" / name


def mention_store_name(description_source: str) -> str:
    """``mention_features`` for the default source, ``mention_features_desc-<source>`` for the others, so the
    ablation store (e.g. "none") lives beside the main one instead of replacing it."""
    return MENTION_FEATURES if description_source == "auto" else f"{MENTION_FEATURES}_desc-{description_source}"


def entity_store_dir(lake: Lake) -> Path:
    return feature_store_dir(lake, ENTITY_FEATURES)


def mention_store_dir(lake: Lake) -> Path:
    """The mention store of the lake's description source: `mention_features` writes it, later stages read it."""
    return feature_store_dir(lake, mention_store_name(lake.description_source))


def kb_shard_store_dir(lake: Lake, shard_key: str, count: int) -> Path:
    return feature_store_dir(lake, KB_SHARD_STORES) / f"{shard_key}-of-{count}"


def inbox_store_dir(lake: Lake, partition: str) -> Path:
    """The mention features of one inbox file (features/inbox/<partition key>/), made by linking."""
    return feature_store_dir(lake, "inbox") / partition


# -- indexes: index/<name>/ ----------------------------------------------------------------------------------
def entity_index_dir(lake: Lake) -> Path:
    """The zero-shot FAISS index over the entity features (asset `entity_index`)."""
    return lake.root / "index" / "entity"


def retrieval_index_dir(lake: Lake) -> Path:
    """The FAISS index over the trained matcher's entity vectors (asset `retrieval_index`)."""
    return lake.root / "index" / "trained"


# -- caches and bookkeeping ----------------------------------------------------------------------------------
WIKIDATA_CACHE = "wikidata"  # duckdb/wikidata.duckdb: API answers and dump lookups
LLM_CHOICES_CACHE = "llm_choices"  # duckdb/llm_choices.duckdb: the LLM's description choices
FILE_HASHES = "file_hashes.parquet"  # state/: content hashes of dataset files by (path, size, mtime)
IMAGE_CHECKS = "image_checks.parquet"  # state/: the bad-image verdict per image file
MODEL_HASHES = "model_hashes.parquet"  # state/: content hashes of local LLM weights


def duckdb_dir(lake: Lake) -> Path:
    """Where the WikiData dump index lives (duckdb/<dump digest>.duckdb)."""
    return lake.dir("duckdb")


def llm_export_dir(lake: Lake) -> Path:
    """Local HF exports of LLM weights (e.g. the GGUF SmolLM2 dequantized once)."""
    return lake.dir("models")


# -- MMoE runs: mmoe/ ----------------------------------------------------------------------------------------
def mmoe_dir(lake: Lake) -> Path:
    """Training runs (mmoe/runs/<recipe digest>/) and the current model pointer."""
    return lake.root / "mmoe"


def training_runs_dir(lake: Lake) -> Path:
    """One folder per training recipe digest (asset `mmoe_model`, see `pipeline.training.train`)."""
    return mmoe_dir(lake) / "runs"


def current_model_path(lake: Lake) -> Path:
    """The report of the model that evaluation, the trained index and linking use (written by `mmoe_model`)."""
    return mmoe_dir(lake) / "current.json"


def evaluation_dir(lake: Lake) -> Path:
    return mmoe_dir(lake) / "evaluation"
