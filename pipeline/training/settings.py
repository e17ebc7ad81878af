"""Training and evaluation settings, dataset presets, and the matcher config they imply.

Learning rate. The paper fine-tunes all of CLIP together with the matcher at 5e-6 (WikiMEL) / 1e-5 (the
others); those rates suit a pretrained backbone that must not drift. Here CLIP is frozen (its features are
cached in the feature store) and only the randomly initialised matcher head trains, which needs a larger
step: `lr_preset="head"` (default, `HEAD_LR`, measured on the demo: see bench/mmoe.md) or `lr_preset="paper"`
for the published rates. An explicit `lr > 0` overrides both.

Everything that decides the trained weights goes into `recipe()`, whose digest keys the stored run (so a
change of any of it trains anew and an unchanged recipe reuses or resumes); the device, AMP and batch sizes
of evaluation do not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from model import DATASET_TOP_K, MMoEConfig
from pipeline.devices import resolve_device
from pipeline.errors import MELUserError

GATE_MODES = ("topk", "reference")
LR_PRESETS = ("head", "paper")
PAPER_LR = {"wikimel": 5e-6, "richpediamel": 1e-5, "wikidiverse": 1e-5}
HEAD_LR = 3e-4  # matcher head on frozen features; chosen from the lr sweep in bench/mmoe.md
UNIT_NAMES = ("text", "image", "cross")


@dataclass(frozen=True)
class TrainingSettings:
    """What to train and how. Defaults: the paper's WikiMEL setting with a head-only learning rate."""

    preset: str = "wikimel"  # wikimel | richpediamel | wikidiverse: top-k of the experts and the paper's lr
    gate_mode: str = "topk"  # topk (paper) | reference (published code, batch-dependent scores)
    top_k: int = 0  # experts per token; 0 = the preset's (3 / 4 / 2)
    num_experts: int = 4
    hidden_dim: int = 96  # width of the vision projection and of the three units (paper: 96)
    units: tuple[str, ...] = UNIT_NAMES  # scoring units kept (ablations)
    lr_preset: str = "head"  # head (HEAD_LR) | paper (PAPER_LR of the preset)
    lr: float = 0.0  # > 0 overrides lr_preset
    weight_decay: float = 1e-4  # except biases and norm weights
    batch_size: int = 32
    epochs: int = 20
    patience: int = 3  # epochs without a better dev MRR before stopping
    hard_negatives: int = 3  # per mention, from its FAISS candidates, gold excluded
    hard_negative_pool: int = 20  # sampled among the best this many non-gold candidates
    retrieval_loss_weight: float = 1.0  # weight of the separable part's own CE (the trained index ranks by it)
    retrieval_rounds: int = 2  # most training rounds; round r > 1 mines its candidates from round r-1's model
    aux_loss_weight: float = 0.01  # load-balancing loss (topk only)
    seed: int = 0
    device: str = "auto"  # auto = cuda when available
    amp: bool = True  # bf16 (or fp16 + loss scaling) autocast, on CUDA only
    rerank_k: int = 100  # candidates reranked per mention (at most what mention_candidates holds)
    full_kb: bool = False  # evaluation also scores every KB entity (small KBs, checking)
    eval_batch_size: int = 64  # mentions per scoring call in evaluation
    progress: bool = True  # tqdm progress bar during training

    def __post_init__(self) -> None:
        unknown = sorted(set(self.units) - set(UNIT_NAMES))
        if unknown:
            raise MELUserError(f"TrainingResource.units names {unknown}; the units are {', '.join(UNIT_NAMES)}.")
        object.__setattr__(self, "units", tuple(u for u in UNIT_NAMES if u in tuple(self.units)))

    def validate(self) -> None:
        """MELUserError naming the first bad setting."""
        if self.preset not in PAPER_LR:
            raise MELUserError(f"TrainingResource.preset {self.preset!r} is not one of {', '.join(PAPER_LR)}.")
        if self.gate_mode not in GATE_MODES:
            raise MELUserError(f"TrainingResource.gate_mode {self.gate_mode!r} is not one of topk, reference.")
        if self.lr_preset not in LR_PRESETS:
            raise MELUserError(f"TrainingResource.lr_preset {self.lr_preset!r} is not one of head, paper.")
        if not self.units:
            raise MELUserError(f"TrainingResource.units must name at least one of {', '.join(UNIT_NAMES)}.")
        if not 1 <= self.effective_top_k <= self.num_experts:
            raise MELUserError(f"TrainingResource.top_k ({self.effective_top_k}) must be between 1 and "
                               f"num_experts ({self.num_experts}).")
        positive = ("num_experts", "hidden_dim", "batch_size", "epochs", "rerank_k", "eval_batch_size",
                    "retrieval_rounds")
        for name in positive:
            if getattr(self, name) < 1:
                raise MELUserError(f"TrainingResource.{name} must be at least 1, not {getattr(self, name)}.")
        for name in ("patience", "hard_negatives", "hard_negative_pool", "lr", "weight_decay", "aux_loss_weight",
                     "retrieval_loss_weight"):
            if getattr(self, name) < 0:
                raise MELUserError(f"TrainingResource.{name} must not be negative, not {getattr(self, name)}.")
        if self.hard_negatives > self.hard_negative_pool:
            raise MELUserError(f"TrainingResource.hard_negatives ({self.hard_negatives}) exceeds "
                               f"hard_negative_pool ({self.hard_negative_pool}).")
        self.torch_device()

    @property
    def effective_top_k(self) -> int:
        return self.top_k or DATASET_TOP_K[self.preset]

    @property
    def learning_rate(self) -> float:
        if self.lr > 0:
            return self.lr
        return PAPER_LR[self.preset] if self.lr_preset == "paper" else HEAD_LR

    def replace(self, **changes) -> "TrainingSettings":
        return dataclasses.replace(self, **changes)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device, "TrainingResource.device")

    def recipe(self) -> dict:
        """The settings that decide the trained weights (device, AMP and evaluation settings excluded)."""
        excluded = {"device", "amp", "rerank_k", "full_kb", "eval_batch_size", "progress"}
        recipe = {k: v for k, v in dataclasses.asdict(self).items() if k not in excluded}
        recipe.update(top_k=self.effective_top_k, lr=self.learning_rate, units=list(self.units))
        return recipe

    def model_config(self, dims: dict) -> MMoEConfig:
        """The matcher config for feature-store dims {D, L, Wt, P1, Wv}."""
        if dims["D"] != dims["Wt"]:
            raise MELUserError(
                f"The feature store's CLIP text width ({dims['Wt']}) differs from its embedding width "
                f"({dims['D']}); the MMoE matcher needs them equal (true of CLIP ViT-B and ViT-L models).")
        if self.gate_mode == "reference" and dims["L"] != dims["P1"]:
            raise MELUserError(
                f"TrainingResource.gate_mode 'reference' needs as many text token states as image tokens (the "
                f"published cross-modal router pairs them by position), but the feature store holds {dims['L']} "
                f"and {dims['P1']}; set ClipResource.text_tokens to {dims['P1']} or use gate_mode 'topk'.")
        hidden = self.hidden_dim
        return MMoEConfig.from_clip_dims(
            dims["D"], dims["Wt"], dims["Wv"], vision_dim=hidden, text_hidden_dim=hidden,
            vision_hidden_dim=hidden, cross_hidden_dim=hidden, num_experts=self.num_experts,
            top_k=self.effective_top_k, gate_mode=self.gate_mode,
            aux_loss_weight=self.aux_loss_weight if self.gate_mode == "topk" else 0.0, units=self.units)
