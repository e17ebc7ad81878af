"""The matcher's separable part as one vector per item, so that a trained matcher can retrieve by inner product.

Each unit's score is the mean of a term that is a dot product of per-item vectors and, for the intra-level
units, a term that is not (the entity's tokens attending over the mention's):

    text, image:  (cls_m . cls_e + global_to_local(m, e)) / 2
    cross:        (ti_m . ti_e + it_m . it_e) / 2

and the total is their mean over the n enabled units. So the separable part of the total,

    separable(m, e) = (cls_text_m . cls_text_e + cls_image_m . cls_image_e + ti_m . ti_e + it_m . it_e) / (2 n)

(each term present when its unit is), is the inner product r_m . r_e of

    r = concat(text.cls, image.cls, cross.text_over_image, cross.image_over_text) / sqrt(2 n).

Mentions and entities share the layout, so an index of entity vectors answers mention queries directly, and
the vectors change whenever the matcher does. Training can weigh this part's own cross-entropy
(`model.mmoe_loss(..., retrieval_weight=w)`) so that it ranks well alone, not only inside the total.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import MMoEConfig


def retrieval_dim(config: MMoEConfig) -> int:
    """Width of the retrieval vector for this config."""
    widths = {"text": config.text_dim, "image": config.vision_dim, "cross": 2 * config.cross_hidden_dim}
    return sum(widths[unit] for unit in config.units)


def retrieval_vectors(encoding, config: MMoEConfig) -> Tensor:
    """encoding: an `Encoding` with batch shape [*B] -> [*B, retrieval_dim(config)] (the encoding's dtype)."""
    parts = []
    if encoding.text is not None:
        parts.append(encoding.text.cls)
    if encoding.image is not None:
        parts.append(encoding.image.cls)
    if encoding.cross is not None:
        parts += [encoding.cross.text_over_image, encoding.cross.image_over_text]
    return torch.cat(parts, dim=-1) / math.sqrt(2 * len(config.units))
