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


def mmoe_loss(scores: MatchScores, targets: Tensor) -> LossOutput:
    """CE(total) + CE(text) + CE(image) + CE(cross) + aux.

    scores: [M, E] each (in-batch: targets = arange(M)) or [M, K] (targets = gold candidate column).
    targets: [M] long. `scores.aux_loss` is already weighted by config.aux_loss_weight.
    """
    parts = {
        "total": F.cross_entropy(scores.total.float(), targets),
        "text": F.cross_entropy(scores.text.float(), targets),
        "image": F.cross_entropy(scores.image.float(), targets),
        "cross": F.cross_entropy(scores.cross.float(), targets),
        "aux": scores.aux_loss.float(),
    }
    loss = sum(parts.values())
    return LossOutput(loss, {name: value.detach() for name, value in parts.items()})
