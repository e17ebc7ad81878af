"""Configuration of the MMoE matcher (all widths, experts, gate mode).

Field names are ours; the public MMoE code's names are given in brackets where they differ, so its YAML
`model:` section maps over directly (see `model.reference.config_from_reference_dims`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

GATE_MODES = ("topk", "reference")
UNITS = ("text", "image", "cross")  # intra-level text, intra-level vision, inter-level cross-modal

# CLIP feature widths: (projected embedding width, text tower width, vision tower width).
CLIP_DIMS: dict[str, tuple[int, int, int]] = {
    "ViT-B-32": (512, 512, 768),
    "ViT-B-16": (512, 512, 768),
    "ViT-L-14": (768, 768, 1024),
    "ViT-H-14": (1024, 1024, 1280),
}

# Paper / public code settings per dataset (4 experts, hidden width 96, CLIP ViT-B-32).
DATASET_TOP_K: dict[str, int] = {"wikimel": 3, "richpediamel": 4, "wikidiverse": 2}
PAPER_HIDDEN_DIM = 96


@dataclass(frozen=True)
class MMoEConfig:
    """Widths and routing settings. Defaults = the paper's WikiMEL setting on CLIP ViT-B-32, `topk` gate."""

    embed_dim: int = 512  # CLIP projected text/image embedding width [input_hidden_dim]
    text_dim: int = 512  # CLIP text tower token width [dt]; must equal embed_dim (one LayerNorm/MoE for both)
    image_token_dim: int = 768  # CLIP vision tower token width [input_image_hidden_dim]
    vision_dim: int = PAPER_HIDDEN_DIM  # width image embedding and tokens are projected to [dv]
    text_hidden_dim: int = PAPER_HIDDEN_DIM  # text unit expert output / attention width [TGLU_hidden_dim]
    vision_hidden_dim: int = PAPER_HIDDEN_DIM  # vision unit expert output / attention width [IDLU_hidden_dim]
    cross_hidden_dim: int = PAPER_HIDDEN_DIM  # cross-modal unit width [CMFU_hidden_dim]
    num_experts: int = 4
    top_k: int = 3  # [top_experts]
    expert_mult: int = 4  # expert feed-forward: dim -> expert_mult * dim -> out
    gate_mode: str = "topk"  # "topk" (paper) or "reference" (published code, batch-dependent; see GATES.md)
    aux_loss_weight: float = 0.01  # load-balancing loss weight (topk only; 0 disables)
    dropout: float = 0.0  # inside each expert, between GELU and the output layer (as the public code)
    units: tuple[str, ...] = UNITS  # scoring units kept (ablations); total = mean of their scores

    def __post_init__(self) -> None:
        requested = (self.units,) if isinstance(self.units, str) else tuple(self.units)
        if not requested or any(unit not in UNITS for unit in requested):
            raise ValueError(f"units must be a non-empty subset of {UNITS}, got {self.units!r}")
        # JSON gives lists and callers any order: one canonical tuple, so equal configs compare equal.
        object.__setattr__(self, "units", tuple(unit for unit in UNITS if unit in requested))
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}")
        if self.embed_dim != self.text_dim:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must equal text_dim ({self.text_dim}): the text class vector "
                "and the text tokens share one LayerNorm and one mixture of experts"
            )
        if self.aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight must be >= 0, got {self.aux_loss_weight}")
        if self.gate_mode == "reference" and self.aux_loss_weight != 0:
            raise ValueError("aux_loss_weight must be 0 in reference mode (the published code has no auxiliary loss)")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{field.name} must be a positive int, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MMoEConfig":
        """Build from `to_dict()` output. Unknown keys are an error; missing keys take the defaults."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MMoEConfig fields: {unknown}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "MMoEConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_clip_dims(cls, embed_dim: int, text_width: int, vision_width: int, **overrides: Any) -> "MMoEConfig":
        """Config for CLIP features of the given widths (projected embedding, text tower, vision tower)."""
        return cls(embed_dim=embed_dim, text_dim=text_width, image_token_dim=vision_width, **overrides)

    @classmethod
    def for_clip(cls, clip_name: str = "ViT-B-32", **overrides: Any) -> "MMoEConfig":
        """Config for a named CLIP architecture, e.g. `MMoEConfig.for_clip("ViT-L-14", top_k=2)`."""
        if clip_name not in CLIP_DIMS:
            raise ValueError(f"unknown CLIP architecture {clip_name!r}; known: {sorted(CLIP_DIMS)}")
        return cls.from_clip_dims(*CLIP_DIMS[clip_name], **overrides)

    @classmethod
    def paper(cls, dataset: str, clip_name: str = "ViT-B-32", **overrides: Any) -> "MMoEConfig":
        """The paper's setting for a dataset: 4 experts, hidden width 96, the dataset's top-k.

        `dataset` is one of "wikimel" (top-3), "richpediamel" (top-4), "wikidiverse" (top-2), any case.
        """
        key = dataset.lower().replace("-", "").replace("_", "")
        if key not in DATASET_TOP_K:
            raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASET_TOP_K)}")
        settings: dict[str, Any] = {"num_experts": 4, "top_k": DATASET_TOP_K[key]}
        settings.update(overrides)
        return cls.for_clip(clip_name, **settings)
