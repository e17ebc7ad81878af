"""Input features of the matcher (raw CLIP outputs) and their checks.

A batch holds N items (mentions or entities); candidate batches may have leading shape [M, K] instead of [N].
The one container of such a batch everywhere: what the CLIP encoder returns and the feature store writes and
reads back (float16 CPU tensors there), and what the matcher takes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterator, Optional

import torch
from torch import Tensor


class NonFiniteFeatureError(ValueError):
    """A feature tensor holds NaN or Inf values."""


@dataclass
class MMoEFeatures:
    """CLIP features of a batch of items, before the matcher's projections.

    text_embeds:  [*B, embed_dim]           CLIP's projected text embedding
    text_tokens:  [*B, Lt, text_dim]        text tower last hidden states
    image_embeds: [*B, embed_dim]           CLIP's projected image embedding
    image_tokens: [*B, Li, image_token_dim] vision tower last hidden states, class token first
    text_mask:    [*B, Lt] bool or None     True = real token; None = every position is real
    has_image:    [*B] bool or None         False = no image: the matcher replaces that row's image features
                                            by zeros (a feature-level zero image), whatever they hold. None = all
                                            rows have an image.
    *B is (N,) for mentions/entities, (M, K) for per-mention candidates.

    Missing images: the public code feeds CLIP an all-zero pixel image, and the item is scored like any other
    (no unit is masked). `has_image=False` keeps that behaviour at the feature level. To reproduce the public
    inputs exactly, put CLIP's features of a zero pixel image in those rows and leave `has_image` None.
    """

    text_embeds: Tensor
    text_tokens: Tensor
    image_embeds: Tensor
    image_tokens: Tensor
    text_mask: Optional[Tensor] = None
    has_image: Optional[Tensor] = None

    @property
    def batch_shape(self) -> torch.Size:
        return self.text_embeds.shape[:-1]

    def tensors(self) -> Iterator[tuple[str, Tensor]]:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                yield field.name, value

    def map(self, fn) -> "MMoEFeatures":
        """Apply fn to every tensor (e.g. `lambda t: t.to(device)` or a reshape)."""
        return replace(self, **{name: fn(value) for name, value in self.tensors()})

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "MMoEFeatures":
        """Move to a device; `dtype` only casts the float tensors (masks stay bool)."""
        return self.map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def flatten_batch(self) -> "MMoEFeatures":
        """[*B, ...] -> [prod(B), ...]."""
        batch_dims = len(self.batch_shape)
        return self.map(lambda t: t.reshape(-1, *t.shape[batch_dims:]))

    def select(self, index) -> "MMoEFeatures":
        """Rows `index` of a flat batch (int, slice, list or index tensor)."""
        return self.map(lambda t: t[index])

    def __len__(self) -> int:
        return self.text_embeds.shape[0]


def nonfinite_rows(tensor: Tensor) -> list[int]:
    """Indices (along dim 0) of rows containing NaN or Inf."""
    if not tensor.is_floating_point():
        return []
    bad = ~torch.isfinite(tensor)
    return bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist()


def check_finite_features(features: MMoEFeatures, name: str = "features", max_rows_shown: int = 20) -> None:
    """Raise NonFiniteFeatureError naming each tensor and row index with NaN/Inf values.

    Image features of rows flagged `has_image=False` are not checked: the matcher replaces them.
    Call this on every batch before the forward pass; the training loop must stop, not skip.
    """
    flat = features.flatten_batch()
    problems = []
    for tensor_name, tensor in flat.tensors():
        if tensor_name.startswith("image_") and flat.has_image is not None:
            tensor = torch.where(_expand_rows(flat.has_image, tensor), tensor, torch.zeros_like(tensor))
        rows = nonfinite_rows(tensor)
        if rows:
            shown = rows[:max_rows_shown] + (["..."] if len(rows) > max_rows_shown else [])
            problems.append(f"{name}.{tensor_name}: rows {shown} ({len(rows)} of {tensor.shape[0]})")
    if problems:
        where = ("" if len(features.batch_shape) == 1
                 else f" (rows index the flattened batch {tuple(features.batch_shape)})")
        raise NonFiniteFeatureError("non-finite (NaN/Inf) feature values in " + "; ".join(problems) + where)


def _expand_rows(row_flags: Tensor, like: Tensor) -> Tensor:
    return row_flags.reshape(row_flags.shape + (1,) * (like.dim() - row_flags.dim()))


def check_feature_shapes(features: MMoEFeatures, embed_dim: int, text_dim: int, image_token_dim: int) -> None:
    """Raise ValueError on widths or batch shapes that do not fit the config, or rows without any text token."""
    batch = tuple(features.batch_shape)
    expected = {
        "text_embeds": batch + (embed_dim,),
        "image_embeds": batch + (embed_dim,),
    }
    for name, shape in expected.items():
        actual = tuple(getattr(features, name).shape)
        if actual != shape:
            raise ValueError(f"{name} has shape {actual}, expected {shape}")
    _check_tokens("text_tokens", features.text_tokens, batch, text_dim)
    _check_tokens("image_tokens", features.image_tokens, batch, image_token_dim)
    text_len = features.text_tokens.shape[len(batch)]
    if features.text_mask is not None:
        if features.text_mask.dtype != torch.bool or tuple(features.text_mask.shape) != batch + (text_len,):
            raise ValueError(f"text_mask must be bool of shape {batch + (text_len,)}, got "
                             f"{features.text_mask.dtype} {tuple(features.text_mask.shape)}")
        empty = (~features.text_mask.reshape(-1, text_len).any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"text_mask has no real token in rows {empty[:20]}")
    if features.has_image is not None and (features.has_image.dtype != torch.bool
                                            or tuple(features.has_image.shape) != batch):
        raise ValueError(f"has_image must be bool of shape {batch}, got "
                         f"{features.has_image.dtype} {tuple(features.has_image.shape)}")


def _check_tokens(name: str, tokens: Tensor, batch: tuple, width: int) -> None:
    if tokens.dim() != len(batch) + 2 or tuple(tokens.shape[: len(batch)]) != batch or tokens.shape[-1] != width:
        raise ValueError(f"{name} has shape {tuple(tokens.shape)}, expected {batch} + (tokens, {width})")
