"""A synthetic lake for tests and benchmarks: feature stores, `mentions` and `mention_candidates`, written by
the project's real writers (StoreWriter, Lake.write_table, the FAISS index and candidate search) at the
places `pipeline.catalog` names.

The world: entities come in groups of `group_size` near-twins, like namesakes. Every feature vector has a
group part, shared by the twins and `group_scale` times larger, in its first half of dimensions, and the
entity's own part in the second half; a mention is a noisy copy of its gold. Cosine similarity is dominated by
the group part, so zero-shot scoring finds the group but often not the member; the member is told apart by
the second half, which a trained matcher can learn to weigh up (its projections and norms are per dimension).
Texts have random real lengths with zero states past the end, as the encoder writes them; a share of the
items has no image (constant zero-image features, `has_image` False); a share of the mentions is nil.

Generation streams in chunks (entities chunk by chunk, mentions from their golds read back from the written
store), so a 100k-entity store of any width never sits in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from model.features import MMoEFeatures
from pipeline import catalog
from pipeline.features import FeatureStore, StoreWriter
from pipeline.features.schema import batch_dims
from pipeline.hashing import hash_bytes
from pipeline.index import IndexSettings, build_entity_index, find_mention_candidates
from pipeline.ingest import MENTIONS_SCHEMA
from pipeline.lake import Lake

SPLITS = ("train", "dev", "test")
CHUNK = 4096
ZERO_IMAGE_VALUE = 0.1  # the (constant) features of items without an image
SMALL_DIMS = {"D": 16, "L": 8, "Wt": 16, "P1": 5, "Wv": 12}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticWorld:
    entities: int = 60
    mentions: dict = field(default_factory=lambda: {"train": 96, "dev": 24, "test": 24})
    dims: dict = field(default_factory=lambda: dict(SMALL_DIMS))
    group_size: int = 3
    group_scale: float = 3.0  # size of the group part (first half of the dims) against the own part (second half)
    noise: float = 2.0  # mention = gold + noise * N(0, 1)
    nil_share: float = 0.05
    no_image_share: float = 0.1
    seed: int = 0
    encoder: dict = field(default_factory=lambda: {"arch": "synthetic", "weights": "random seed=0"})
    top_k: int = 20  # FAISS candidates per mention


def build_synthetic_lake(lake: Lake, world: SyntheticWorld = SyntheticWorld()) -> Lake:
    """Write the entity and mention stores, the mentions table, the entity index and mention_candidates."""
    chunk = CHUNK - CHUNK % world.group_size  # a group never straddles two chunks
    entity_chunks = (_entity_chunk(world, start, min(start + chunk, world.entities))
                     for start in range(0, world.entities, chunk))
    write_store(catalog.entity_store_dir(lake), [str(i) for i in range(world.entities)], entity_chunks, world.encoder,
                {"kind": "entity", "synthetic": True})
    table, gold = _mentions_table(world)
    entities = FeatureStore.open(catalog.entity_store_dir(lake))
    write_store(catalog.mention_store_dir(lake), table.column("mention_id").to_pylist(),
                _mention_chunks(world, entities, gold), world.encoder, {"kind": "mention", "synthetic": True})
    lake.write_table(catalog.MENTIONS, table, fingerprint=f"synthetic-{world.seed}-{len(table)}",
                     extra={"dataset_dir": str(lake.root)})
    index_candidates(lake, world.top_k)
    return lake


def index_candidates(lake: Lake, top_k: int) -> None:
    """The real retrieval stages on the lake's stores: entity index, then mention_candidates."""
    settings = IndexSettings(use_gpu="never", candidates_per_mention=top_k)
    build_entity_index(lake, settings, logger=log)
    find_mention_candidates(lake, settings, logger=log)


def write_store(root: Path, ids: list[str], chunks: Iterator[MMoEFeatures], encoder: dict,
                recipe: dict) -> None:
    """Write feature chunks (float16 CPU tensors), in the order of `ids`, as a feature store (content keys:
    digests of the values)."""
    keys: list[str] = []
    with StoreWriter(root, encoder, recipe) as writer:
        for features in chunks:
            start, end = len(keys), len(keys) + len(features)
            keys += [hash_bytes(ids[row].encode() + features.text_embeds[row - start].numpy().tobytes()
                                + features.image_tokens[row - start].numpy().tobytes()) for row in range(start, end)]
            if writer.dims is None:
                writer.set_dims(batch_dims(features))
            writer.add(ids[start:end], keys[start:end], features, [False] * (end - start),
                       [[] for _ in range(end - start)])
        writer.commit(ids, keys)


def _entity_chunk(world: SyntheticWorld, start: int, end: int) -> MMoEFeatures:
    rng = np.random.default_rng([world.seed, 1, start])
    d, n = world.dims, end - start
    member = np.arange(start, end) // world.group_size
    member -= member[0]

    def twins(*shape):
        group = world.group_scale * rng.standard_normal((member[-1] + 1, *shape), dtype=np.float32)
        values = rng.standard_normal((n, *shape), dtype=np.float32)  # the own part
        half = shape[-1] // 2
        values[..., :half] = group[member][..., :half]
        return values

    lengths = rng.integers(2, d["L"] + 1, size=n)
    has_image = rng.random(n) >= world.no_image_share
    return _assemble(twins(d["D"]), twins(d["L"], d["Wt"]), lengths, twins(d["D"]), twins(d["P1"], d["Wv"]), has_image)


def _assemble(text_embeds, text_tokens, lengths, image_embeds, image_tokens, has_image) -> MMoEFeatures:
    mask = np.arange(text_tokens.shape[1])[None, :] < lengths[:, None]
    text_tokens = text_tokens * mask[..., None]
    image_embeds = np.where(has_image[:, None], image_embeds, ZERO_IMAGE_VALUE)
    image_tokens = np.where(has_image[:, None, None], image_tokens, ZERO_IMAGE_VALUE)

    def half(values):
        return torch.from_numpy(values.astype(np.float16))

    return MMoEFeatures(half(text_embeds), half(text_tokens), half(image_embeds), half(image_tokens),
                        text_mask=torch.from_numpy(mask), has_image=torch.from_numpy(has_image.astype(bool)))


def _mentions_table(world: SyntheticWorld) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng([world.seed, 2])
    rows, golds = [], []
    for split in SPLITS:
        for i in range(world.mentions.get(split, 0)):
            row, gold = _mention_row(world, rng, split, i)
            rows.append(row)
            golds.append(gold)
    return pa.Table.from_pylist(rows, schema=MENTIONS_SCHEMA), np.asarray(golds, dtype=np.int64)


def _mention_row(world: SyntheticWorld, rng: np.random.Generator, split: str, i: int) -> tuple[dict, int]:
    nil = bool(rng.random() < world.nil_share)
    gold = -1 if nil else int(rng.integers(world.entities))
    return {
        "mention_id": f"{split}:{i}", "split": split, "record_id": str(i), "mention": f"m{i}",
        "sentence": f"synthetic mention {i}", "gold_name": None if nil else f"entity {gold}",
        "gold_qid": None if nil else f"Q{gold}", "gold_index": None if nil else gold, "is_nil": nil,
        "description": None, "image_path": None, "image_digest": None, "has_image": True,
        "source_file": f"synthetic_{split}.json", "record_index": i,
    }, gold


def append_mentions(lake: Lake, world: SyntheticWorld = SyntheticWorld(), split: str = "test",
                    count: int = 24) -> list[str]:
    """Add `count` new mentions to `split` (ids after its existing ones), as a dataset that gained records
    would: rows appended to the mentions table and the mention store, then mention_candidates searched
    again. Returns the new mention ids. Small lakes only (the mention store is rewritten whole)."""
    table = lake.read_table(catalog.MENTIONS)
    first = table.column("split").to_pylist().count(split)
    rng = np.random.default_rng([world.seed, 4, first])
    rows, golds = zip(*(_mention_row(world, rng, split, first + i) for i in range(count)))
    combined = pa.concat_tables([table.select(MENTIONS_SCHEMA.names).cast(MENTIONS_SCHEMA),
                                 pa.Table.from_pylist(list(rows), schema=MENTIONS_SCHEMA)])
    store = FeatureStore.open(catalog.mention_store_dir(lake))
    new_ids = [row["mention_id"] for row in rows]
    entities = FeatureStore.open(catalog.entity_store_dir(lake))
    new_features = _mention_chunks(world, entities, np.asarray(golds, dtype=np.int64), offset=len(store))
    write_store(catalog.mention_store_dir(lake), store.ids.tolist() + new_ids, iter([read_all(store), *new_features]),
                store.encoder, store.recipe)
    lake.write_table(catalog.MENTIONS, combined, fingerprint=f"synthetic-{world.seed}-{len(combined)}",
                     extra=lake.table_extra(catalog.MENTIONS))
    index_candidates(lake, world.top_k)
    return new_ids


def _mention_chunks(world: SyntheticWorld, entities: FeatureStore, gold: np.ndarray,
                    offset: int = 0) -> Iterator[MMoEFeatures]:
    """Noisy copies of the golds' stored features (nil mentions: random features); `offset`: where in the
    store these mentions start (so that appended mentions draw noise of their own)."""
    for start in range(0, len(gold), CHUNK):
        rng = np.random.default_rng([world.seed, 3, offset + start])
        chunk_gold = gold[start:start + CHUNK]
        nil = chunk_gold < 0
        source = entities.take(np.where(nil, 0, chunk_gold))

        def noisy(name):
            values = getattr(source, name).numpy().astype(np.float32)
            values[nil] = rng.standard_normal(values[nil].shape, dtype=np.float32)
            return values + world.noise * rng.standard_normal(values.shape, dtype=np.float32)

        lengths = source.text_mask.numpy().sum(axis=1)
        has_image = rng.random(len(chunk_gold)) >= world.no_image_share
        yield _assemble(noisy("text_embeds"), noisy("text_tokens"), lengths, noisy("image_embeds"),
                        noisy("image_tokens"), has_image)


def rewrite_store(root: Path, edit: Callable[[MMoEFeatures], None] | None = None, encoder: dict | None = None,
                  drop: tuple[str, ...] = ()) -> None:
    """Read a whole store, let `edit(features)` change its tensors in place, leave out the ids in `drop`,
    and write it back (tests of bad input: NaN rows, another encoder, missing items). Small stores only."""
    store = FeatureStore.open(root)
    kept = np.flatnonzero(~np.isin(store.ids, list(drop)))
    features = read_all(store, kept)
    if edit is not None:
        edit(features)
    write_store(root, store.ids[kept].tolist(), iter([features]), encoder or store.encoder, store.recipe)


def read_all(store: FeatureStore, rows: np.ndarray | None = None) -> MMoEFeatures:
    """The features of store `rows` (default: all), as `write_store` takes them."""
    return store.take(np.arange(len(store)) if rows is None else rows)
