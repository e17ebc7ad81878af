"""CLIP feature extraction and the Parquet feature store (``entity_features``, ``mention_features``).

- ``encoder``: the open_clip extractor (pooled vectors + token states of text and image) and its identity;
- ``images``: the bad-image policy (decode, convert, downscale, or a recorded reason);
- ``items``: entity and mention items (text, image) from the lake's tables;
- ``store``: the content-addressed Parquet part store, its writer and its memory-mapped reader;
- ``extract``: items -> store, encoding only what the store does not hold.

Readers (``FeatureStore``) import without open_clip, whose import takes seconds: the encoder and
the extraction are imported on first use.
"""

import importlib

from pipeline.features.items import DESCRIPTION_SOURCES, Items, entity_items, mention_items, mention_items_of
from pipeline.features.store import FeatureBatch, FeatureStore, StoreWriter

DEFAULT_ARCH = "mel-tiny-clip"  # registered from model_configs/: the offline, untrained default
_LAZY = {
    "ClipEncoder": "encoder", "EncoderSpec": "encoder", "load_encoder": "encoder",
    "ExtractReport": "extract", "extract_features": "extract",
}

__all__ = [
    "DEFAULT_ARCH", "DESCRIPTION_SOURCES", "FeatureBatch", "FeatureStore", "Items", "StoreWriter",
    "entity_items", "mention_items", "mention_items_of", "mention_store_name", "store_dir", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"pipeline.features.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pipeline.features' has no attribute {name!r}")


def store_dir(lake, name: str):
    """Where the store of asset ``name`` lives in the lake: ``features/<name>``."""
    return lake.root / "features" / name


def mention_store_name(description_source: str) -> str:
    """``mention_features`` for the default source, ``mention_features_desc-<source>`` for the others, so the
    ablation store (e.g. "none") lives beside the main one instead of replacing it."""
    return "mention_features" if description_source == "auto" else f"mention_features_desc-{description_source}"
