"""Training loss: cross-entropy of the total score and of each unit's score (as the public code), plus the
weighted load-balancing loss of the topk gate."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

from .mmoe import MatchScores


class LossOutput(NamedTuple):
    loss: Tensor  # scalar to backpropagate
    parts: dict[str, Tensor]  # detached scalars for logging: total, text, image, cross, aux


def mmoe_loss(scores: MatchScores, targets: Tensor, retrieval_weight: float = 0.0) -> LossOutput:
    """CE(total) + CE(text) + CE(image) + CE(cross) + aux (the CE of a unit disabled by `config.units` is left out),
    plus retrieval_weight * CE(retrieval): the separable part trained to rank alone (model/retrieval.py).

    scores: [M, E] each (in-batch: targets = arange(M)) or [M, K] (targets = gold candidate column).
    targets: [M] long. `scores.aux_loss` is already weighted by config.aux_loss_weight.
    """
    units = {"total": scores.total, "text": scores.text, "image": scores.image, "cross": scores.cross}
    parts = {name: F.cross_entropy(unit.float(), targets) for name, unit in units.items() if unit is not None}
    parts["aux"] = scores.aux_loss.float()
    if retrieval_weight > 0:
        parts["retrieval"] = retrieval_weight * F.cross_entropy(scores.retrieval.float(), targets)
    loss = sum(parts.values())
    return LossOutput(loss, {name: value.detach() for name, value in parts.items()})
