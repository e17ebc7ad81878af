"""CLIP feature extraction and the Parquet feature store (``entity_features``, ``mention_features``).

- ``settings``: ``EncoderSpec``, which encoder to run and how (``ClipResource`` is generated from it);
- ``encoder``: the open_clip extractor (pooled vectors + token states of text and image) and its identity;
- ``images``: the bad-image policy (decode, convert, downscale, or a recorded reason);
- ``items``: entity and mention items (text, image) from the lake's tables;
- ``schema``: the store's format: files, part schema and shapes, manifest, stored columns <-> ``MMoEFeatures``;
- ``mirror``: the Arrow IPC mirror of each part, read row by row with ``preadv``;
- ``store``: the reader (``FeatureStore``): ids, pooled matrices, row subsets as ``MMoEFeatures``;
- ``writer``: the content-addressed writer (``StoreWriter``): parts, commit, compaction, garbage collection;
- ``reuse``: links the committed parts of other stores (``reuse_from``) into a writer's store;
- ``extract``: items -> store, encoding only what the store does not hold;
- ``stage``: the feature stages (``embed_kb_shard``, ``embed_entities``, ``embed_mentions``): lake -> store;
- ``validate``: whether a committed store is fit to read (shapes as its dims declare, finite values);
- ``shards``: the KB shards, their stores, and a store's digest by value.

Readers (``FeatureStore``) import without open_clip, whose import takes seconds: the encoder and
the extraction are imported on first use.
"""

import importlib

from pipeline.features.items import (
    DESCRIPTION_SOURCES,
    Items,
    entity_items,
    mention_items,
    mention_items_of,
)
from pipeline.features.settings import DEFAULT_ARCH, EncoderSpec
from pipeline.features.store import FeatureStore
from pipeline.features.writer import StoreWriter

_LAZY = {
    "ClipEncoder": "encoder", "load_encoder": "encoder",
    "ExtractReport": "extract", "extract_features": "extract",
    "embed_entities": "stage", "embed_kb_shard": "stage", "embed_mentions": "stage",
}

__all__ = [
    "DEFAULT_ARCH", "DESCRIPTION_SOURCES", "EncoderSpec", "FeatureStore", "Items", "StoreWriter",
    "entity_items", "mention_items", "mention_items_of", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"pipeline.features.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pipeline.features' has no attribute {name!r}")

