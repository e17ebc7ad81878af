"""Which predictions rows an evaluation ranks anew: one block per (split, scoring mode), each stored row kept
while its `row_key` is the current one, and the entity encodings the rest need, computed once.

Scoring modes: `rerank@K` reranks the trained index's top-K when there is one (else the zero-shot index's),
`zero_shot_rerank@K` the zero-shot index's beside it, and `full_kb` scores every entity (`full_kb=True`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pipeline.errors import MELUserError
from pipeline.training.data import Inputs, Mentions
from pipeline.training.encodings import EncodedEntities
from pipeline.training.predictions import FULL_KB, ZERO_SHOT, RowKeys
from pipeline.training.scoring import candidate_union
from pipeline.training.settings import TrainingSettings

EVAL_SPLITS = ("dev", "test")


@dataclass
class Block:
    """The predictions rows of one (split, scoring mode): reused stored rows and rows ranked anew."""

    split: str
    scoring: str
    mentions: Mentions  # with the candidate lists this scoring reranks
    positions: np.ndarray  # every mention of the split, in table order
    stored: list[dict | None]  # the reusable stored row per position (None: rank it)
    ranked: dict = field(default_factory=dict)  # position -> new row
    seconds: float = 0.0  # ranking the new rows, entity encodings ready

    @cached_property
    def to_rank(self) -> np.ndarray:
        return np.asarray([p for p, row in zip(self.positions.tolist(), self.stored) if row is None], np.int64)

    def add_ranked(self, rows: dict[int, dict]) -> None:
        self.ranked.update(rows)

    def rows(self) -> list[dict]:
        return [row if row is not None else self.ranked[p] for p, row in zip(self.positions.tolist(), self.stored)]

    def miss_rank(self, inputs: Inputs) -> int:
        return len(inputs.entities) + 1 if self.scoring == FULL_KB else int(self.scoring.split("@")[1]) + 1


def candidate_sources(inputs: Inputs, settings: TrainingSettings, retrieval: Mentions | None) -> dict[str, Mentions]:
    """Scoring mode -> the mentions whose candidate lists it reranks (full KB: any, it reads none)."""
    k = settings.rerank_k
    sources = {f"rerank@{k}": retrieval if retrieval is not None else inputs.mentions}
    if retrieval is not None:
        sources[f"{ZERO_SHOT}rerank@{k}"] = inputs.mentions
    if settings.full_kb:
        sources[FULL_KB] = inputs.mentions
    return sources


def split_positions(mentions: Mentions, logger) -> dict[str, np.ndarray]:
    """The dev and test mentions (nil ones included) of each split that has a linkable one."""
    positions = {}
    for split in EVAL_SPLITS:
        chosen = mentions.select(split, linkable_only=False)
        if (~mentions.is_nil[chosen]).sum() == 0:
            if split == "test":
                raise MELUserError(f"The test split has no linkable (non-nil) mention to evaluate "
                                   f"({len(chosen)} mentions, all nil or none); add test mentions to the dataset.")
            logger.warning(f"The {split} split has no linkable mention: it is not evaluated.")
            continue
        positions[split] = chosen
    return positions


def plan_blocks(positions_by_split: dict[str, np.ndarray], keys: RowKeys,
                stored: dict[tuple[str, str], dict]) -> list[Block]:
    """One block per (split, scoring mode); a stored row is reused when its row_key is the current one."""
    mentions = keys.inputs.mentions
    blocks = []
    for split, positions in positions_by_split.items():
        for scoring, source in keys.sources.items():
            row_keys = [keys.key(p, scoring) for p in positions.tolist()]
            reusable = []
            for p, key in zip(positions.tolist(), row_keys):
                row = stored.get((str(mentions.ids[p]), scoring))
                reusable.append(row if row is not None and row.get("row_key") == key and row["split"] == split
                                else None)
            blocks.append(Block(split, scoring, source, positions, reusable))
    return blocks


def encode_needed(matcher, inputs: Inputs, blocks: list[Block], settings: TrainingSettings, device, started,
                  logger) -> EncodedEntities | None:
    """Encode each entity the mentions to rank need, once, for every split and scoring mode (topk mode)."""
    if matcher.reference_mode:
        return None
    if any(block.scoring == FULL_KB and len(block.to_rank) for block in blocks):
        rows = np.arange(len(inputs.entities))
    else:
        unions = [candidate_union(block.mentions, block.to_rank, settings.rerank_k) for block in blocks]
        rows = np.unique(np.concatenate(unions)) if unions else np.zeros(0, np.int64)
    if len(rows) == 0:
        return None
    entities = EncodedEntities.build(matcher, inputs.entities, rows, device)
    logger.info(f"Encoded {len(entities)} entities in {time.perf_counter() - started:.1f} s.")
    return entities
