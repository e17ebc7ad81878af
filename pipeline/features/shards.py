"""KB shards: a stable split of the entity side, so that embedding a large KB fans out over processes and machines.

Entity ``kb_index`` belongs to shard ``kb_index % count``. The rule is stable as the KB grows (a new entity
gets a new index; an existing one never moves to another shard), balanced, and needs nothing but the index.
Each shard encodes into a feature store of its own (``features/entity_feature_shards/<k>-of-<n>``), so
concurrent workers never share a store, a lock or a file. ``entity_features`` then writes the one store that
every reader uses: it links the shards' committed parts (no feature bytes copied on one filesystem) and
encodes only what no shard holds, e.g. entities added since the shards ran. The store it commits is the
store a single process would have written: same ids, same content keys, same vectors
(``store_content_digest`` compares two stores by value).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features.items import Items
from pipeline.features.schema import FEATURE_COLUMNS, column_values
from pipeline.features.store import FeatureStore
from pipeline.hashing import hash_bytes, hash_strings

SHARD_COUNT_ENV = "MEL_KB_SHARDS"
DEFAULT_SHARD_COUNT = 4
DIGEST_ROWS = 1024  # rows read at a time by store_content_digest


@dataclass(frozen=True)
class KBShards:
    """``count`` shards of the KB; shard keys are zero-padded ("00".."15") so that they sort as numbers."""

    count: int = DEFAULT_SHARD_COUNT

    def __post_init__(self):
        if not isinstance(self.count, int) or self.count < 1:
            raise MELUserError(f"The KB shard count must be a whole number of at least 1 (got {self.count!r}).")

    @classmethod
    def from_env(cls) -> "KBShards":
        """The count in ``$MEL_KB_SHARDS`` (default 4): the code location reads it once, at load."""
        value = os.environ.get(SHARD_COUNT_ENV, "").strip()
        if not value:
            return cls()
        try:
            return cls(int(value))
        except ValueError:
            raise MELUserError(f"${SHARD_COUNT_ENV}={value!r} is not a whole number of KB shards.") from None

    @property
    def keys(self) -> list[str]:
        return [self.key(shard) for shard in range(self.count)]

    def key(self, shard: int) -> str:
        return f"{shard:0{len(str(self.count - 1))}d}"

    def shard(self, key: str) -> int:
        """The shard number of partition key ``key`` (a MELUserError for a key of another count)."""
        if key not in self.keys:
            raise MELUserError(f"{key!r} is not a KB shard of {self.count} (expected one of {self.keys[0]} to "
                               f"{self.keys[-1]}); was ${SHARD_COUNT_ENV} changed since the run was launched?")
        return int(key)

    def of(self, kb_index: int) -> int:
        return int(kb_index) % self.count

    def select(self, entities: Items, shard: int) -> Items:
        """The entities of ``shard``, in the order of ``entities``."""
        return entities.subset([row for row, item in enumerate(entities.ids) if self.of(int(item)) == shard])

    def store_dir(self, lake, shard: int) -> Path:
        """``features/entity_feature_shards/<k>-of-<n>``: a new count writes new stores beside the old ones."""
        return catalog.kb_shard_store_dir(lake, self.key(shard), self.count)

    def store_dirs(self, lake) -> tuple[Path, ...]:
        return tuple(self.store_dir(lake, shard) for shard in range(self.count))


def store_content_digest(store: FeatureStore) -> str:
    """A digest of what ``store`` holds, by value: encoder identity, then per id (in id order) its has_image flag
    and every feature. Two stores with the same digest serve the same features for the same ids, however their
    rows are ordered or split into parts. Text token states past an item's length are left out (the encoder
    pads each batch to its own longest text, so they are +0 or -0 depending on the batch) and -0 counts as 0."""
    order = np.argsort(store.ids, kind="stable")
    parts = [hash_strings([json.dumps(store.encoder, sort_keys=True)])]
    for start in range(0, len(order), DIGEST_ROWS):
        rows = order[start:start + DIGEST_ROWS]
        batch = store.take(rows)
        parts.append(hash_strings(store.ids[rows].tolist()))
        parts.append(hash_bytes(batch.has_image.numpy().tobytes()))
        batch.text_tokens = torch.where(batch.text_mask[..., None], batch.text_tokens, 0)
        parts += [hash_bytes((column_values(batch, name) + 0).contiguous().numpy().tobytes())
                  for name in FEATURE_COLUMNS]
    return hash_strings(parts)
