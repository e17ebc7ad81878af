"""The feature stages: each brings one feature store of the lake up to date with its items.

- ``embed_kb_shard``: one KB shard (``kb_index % count``) into a store of its own, so that embedding a large
  KB fans out over processes or machines (``entity_feature_shards``);
- ``embed_entities``: every KB entity into ``entity_features``, linking the parts the shard stores hold;
- ``embed_mentions``: every mention into the lake's mention store (``catalog.mention_store_dir``: one per
  description source).

Only items whose text, image or encoder changed are encoded (``force`` re-encodes all).
"""

from __future__ import annotations

import logging

from pipeline import catalog
from pipeline.features.extract import ExtractReport, extract_features
from pipeline.features.items import entity_items, mention_items
from pipeline.features.settings import EncoderSpec
from pipeline.features.shards import KBShards
from pipeline.lake import Lake

log = logging.getLogger(__name__)


def embed_kb_shard(lake: Lake, spec: EncoderSpec, shards: KBShards, shard: int, *, force: bool = False,
                   logger=log) -> ExtractReport:
    items = shards.select(entity_items(lake), shard)
    return extract_features(items, shards.store_dir(lake, shard), spec, force=force, logger=logger)


def embed_entities(lake: Lake, spec: EncoderSpec, shards: KBShards, *, force: bool = False,
                   logger=log) -> ExtractReport:
    return extract_features(entity_items(lake), catalog.entity_store_dir(lake), spec, force=force,
                            reuse_from=shards.store_dirs(lake), logger=logger)


def embed_mentions(lake: Lake, spec: EncoderSpec, *, force: bool = False, logger=log) -> ExtractReport:
    items = mention_items(lake, lake.description_source)  # validates the source before any work
    return extract_features(items, catalog.mention_store_dir(lake), spec, force=force, logger=logger)
