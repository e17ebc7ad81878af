"""Zero-shot baselines, on the same split and the same rank conventions as the MMoE evaluation.

Zero-shot CLIP: cosine of the pooled CLIP vectors of mention and entity (text, image, or the mean of both), over
every entity of the KB, ties counted against the gold. CLIP features of a missing image are those of the zero
image (as stored), which is what the paper's CLIP baseline sees.

The ablations (bench/ablations.py) train the same recipe with one thing changed; "no description" trains and
evaluates on a second mention store whose texts were built without the description
(`description_source="none"`), reranking the same FAISS candidates, so only the matcher's input differs.
"""

from __future__ import annotations

import numpy as np
import torch

from model import gold_ranks
from pipeline.features.store import FeatureStore
from pipeline.training.data import Mentions

MODALITIES = ("text", "image", "both")
SIMILARITY_BATCH = 256  # mentions per similarity block: [batch, E] float32 in memory
ENTITY_CHUNK = 16384  # entity rows read from the memory-mapped store at a time


def zero_shot_ranks(entities: FeatureStore, mention_store: FeatureStore, mentions: Mentions, positions: np.ndarray,
                    modality: str) -> np.ndarray:
    """Rank of each mention's gold among all entities of the store by pooled-vector cosine (1-based).

    Mentions without features or whose gold has none get rank E + 1; nil mentions rank 0 (no gold).
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
    positions = np.asarray(positions, dtype=np.int64)
    miss_rank = len(entities) + 1
    ranks = np.where(mentions.is_nil[positions], 0, miss_rank).astype(np.int64)
    usable = np.flatnonzero((mentions.mention_row[positions] >= 0) & (mentions.gold_row[positions] >= 0))
    for start in range(0, len(usable), SIMILARITY_BATCH):
        chosen = usable[start:start + SIMILARITY_BATCH]
        rows = mentions.mention_row[positions[chosen]]
        similarity = _similarities(entities, mention_store, rows, modality)
        gold = torch.as_tensor(mentions.gold_row[positions[chosen]])
        ranks[chosen] = gold_ranks(similarity, gold).numpy()
    return ranks


def _similarities(entities: FeatureStore, mention_store: FeatureStore, rows: np.ndarray, modality: str) -> torch.Tensor:
    kinds = ("text", "image") if modality == "both" else (modality,)
    total = torch.zeros(len(rows), len(entities))
    for kind in kinds:
        queries = _unit_rows(np.asarray(mention_store.pooled(kind)[np.sort(rows)], np.float32))
        queries = queries[np.argsort(np.argsort(rows))]  # back to the order asked for
        for start in range(0, len(entities), ENTITY_CHUNK):
            block = _unit_rows(np.asarray(entities.pooled(kind)[start:start + ENTITY_CHUNK], np.float32))
            total[:, start:start + len(block)] += torch.from_numpy(queries @ block.T) / len(kinds)
    # a row with NaN/Inf can never be ranked: it scores below everything rather than poisoning the ranks
    return torch.nan_to_num(total, nan=-2.0, posinf=-2.0, neginf=-2.0)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 1e-12, norms, 1.0)
