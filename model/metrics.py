"""Ranking metrics from gold ranks: Hits@k, mean rank (MR), mean reciprocal rank (MRR).

Ranks are 1-based. A gold entity missing from the scored list (e.g. not in the FAISS top-K) has no rank of its
own: the caller states the rank it counts as (`miss_rank`, e.g. K + 1, or the KB size for a pessimistic MR).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

HITS_AT = (1, 3, 5, 10, 20)


def gold_ranks(scores: Tensor, gold: Tensor, miss_rank: int | None = None) -> Tensor:
    """Rank of each mention's gold column among its scores. scores [M, C] float, gold [M] long -> [M] long.

    Ties count against the gold (pessimistic): rank = number of candidates scoring >= the gold score, so a
    gold tied with others is ranked last among them, independently of order. (The public code ranks ties in
    argsort order, which may be better or worse.) gold[m] < 0 means the gold is not among the columns; its
    rank is `miss_rank`, which must then be given and exceed C.
    """
    if scores.dim() != 2 or gold.shape != scores.shape[:1]:
        raise ValueError(f"expected scores [M, C] and gold [M], got {tuple(scores.shape)} and {tuple(gold.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or Inf; ranks would be meaningless")
    if (gold >= scores.shape[1]).any():
        raise ValueError(f"gold index out of range for {scores.shape[1]} columns")
    missing = gold < 0
    if missing.any() and (miss_rank is None or miss_rank <= scores.shape[1]):
        raise ValueError(f"some golds are missing (gold < 0): pass miss_rank > {scores.shape[1]}")
    gold_scores = scores.gather(1, gold.clamp_min(0).unsqueeze(1))
    ranks = (scores >= gold_scores).sum(dim=1)
    return torch.where(missing, torch.full_like(ranks, miss_rank or 0), ranks)


def ranking_metrics(ranks: Union[Tensor, np.ndarray, Sequence[int]],
                    hits_at: Sequence[int] = HITS_AT) -> dict[str, float]:
    """Ranks (1-based, misses already given their rank) -> {"hits@k": ..., "mr": ..., "mrr": ..., "count": n}."""
    ranks = np.asarray(ranks.cpu() if isinstance(ranks, Tensor) else ranks, dtype=np.float64).reshape(-1)
    if ranks.size == 0:
        raise ValueError("no ranks to average")
    if np.isnan(ranks).any() or (ranks < 1).any():
        raise ValueError("ranks must be >= 1 (1 = gold ranked first)")
    metrics = {f"hits@{k}": float((ranks <= k).mean()) for k in hits_at}
    metrics["mr"] = float(ranks.mean())
    metrics["mrr"] = float((1.0 / ranks).mean())
    metrics["count"] = int(ranks.size)
    return metrics
