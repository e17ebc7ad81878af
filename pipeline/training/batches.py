"""Training batches: train mentions with their golds and hard negatives from their FAISS candidates.

A batch holds B train mentions in an order drawn from (seed, epoch), and as entity columns the golds of those
mentions plus `hard_negatives` per mention, sampled among its best `hard_negative_pool` FAISS candidates other
than its gold. The columns are deduplicated: when two mentions share a gold (or a hard negative of one is the
gold of another) the entity appears once, and each mention's target is the column of its own gold. So no
mention is ever trained against a copy of its own gold as a negative, and every other column is a true
negative for it. This keeps every mention of the epoch (sampling batches with distinct golds would drop or
delay mentions of popular entities).

Data order and negatives depend only on (seed, epoch): a run resumed at epoch e draws exactly the batches the
uninterrupted run drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import MELUserError
from pipeline.training.data import NO_GOLD_FEATURES, NO_MENTION_FEATURES, Mentions


@dataclass
class TrainSet:
    """The train mentions that can be trained on, and how many could not (and why)."""

    positions: np.ndarray  # into Mentions
    mention_rows: np.ndarray
    gold_rows: np.ndarray
    negative_pools: list[np.ndarray]  # entity rows of the best non-gold candidates
    left_out: dict[str, int]  # reason -> count (nil mentions, missing features)

    def __len__(self) -> int:
        return len(self.positions)


def train_set(mentions: Mentions, pool_size: int, split: str = "train") -> TrainSet:
    """Non-nil mentions of `split` with features and a gold that has features; the others are counted."""
    in_split = np.flatnonzero(mentions.split == split)
    left_out = {"nil": int(mentions.is_nil[in_split].sum())}
    linkable = in_split[~mentions.is_nil[in_split]]
    no_features = linkable[mentions.mention_row[linkable] < 0]
    no_gold = linkable[(mentions.mention_row[linkable] >= 0) & (mentions.gold_row[linkable] < 0)]
    left_out.update({NO_MENTION_FEATURES: len(no_features), NO_GOLD_FEATURES: len(no_gold)})
    usable = linkable[(mentions.mention_row[linkable] >= 0) & (mentions.gold_row[linkable] >= 0)]
    if len(usable) == 0:
        raise MELUserError(f"The {split} split has no mention to train on ({len(in_split)} mentions: "
                           f"{_describe_left_out(left_out)}); check the mentions table and the feature stores.")
    pools = []
    for position in usable:
        candidates = mentions.candidates[position]
        pools.append(candidates[candidates != mentions.gold_row[position]][:pool_size])
    return TrainSet(usable, mentions.mention_row[usable], mentions.gold_row[usable], pools, left_out)


def _describe_left_out(left_out: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in left_out.items()) or "none"


@dataclass
class TrainBatch:
    positions: np.ndarray  # into Mentions
    mention_rows: np.ndarray
    entity_rows: np.ndarray  # distinct columns: the golds first, then hard negatives
    targets: np.ndarray  # column of each mention's gold


def epoch_batches(data: TrainSet, batch_size: int, hard_negatives: int, seed: int, epoch: int) -> list[TrainBatch]:
    """The batches of one epoch: a permutation and hard negatives drawn from (seed, epoch) only."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(data))
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        golds = data.gold_rows[chosen]
        negatives = [_sample(data.negative_pools[i], hard_negatives, rng) for i in chosen]
        columns = _unique_in_order(np.concatenate([golds, *negatives]).astype(np.int64))
        column_of = {row: column for column, row in enumerate(columns.tolist())}
        targets = np.asarray([column_of[row] for row in golds.tolist()], dtype=np.int64)
        batches.append(TrainBatch(data.positions[chosen], data.mention_rows[chosen], columns, targets))
    return batches


def _sample(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if count == 0 or len(pool) == 0:
        return np.zeros(0, np.int64)
    return pool[np.sort(rng.choice(len(pool), size=min(count, len(pool)), replace=False))]


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]
