"""Training and evaluation settings, dataset presets, and the matcher config they imply.

Learning rate. The paper fine-tunes all of CLIP together with the matcher at 5e-6 (WikiMEL) / 1e-5 (the
others); those rates suit a pretrained backbone that must not drift. Here CLIP is frozen (its features are
cached in the feature store) and only the randomly initialised matcher head trains, which needs a larger
step: `lr_preset="head"` (default, `HEAD_LR`, measured on the demo: see bench/mmoe.md) or `lr_preset="paper"`
for the published rates. An explicit `lr > 0` overrides both.

Everything that decides the trained weights goes into `recipe()`, whose digest keys the stored run (so a
change of any of it trains anew and an unchanged recipe reuses or resumes); the device, AMP and batch sizes
of evaluation do not.

Every field is documented here (`pipeline.settings.setting`) and checked on creation: a bad value raises
`SettingError` naming the field (the Dagster resource is generated from this dataclass).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from model import DATASET_TOP_K, GATE_MODES, UNITS, MMoEConfig
from pipeline.devices import resolve_device
from pipeline.errors import MELUserError
from pipeline.settings import refuse, setting

LR_PRESETS = ("head", "paper")
PAPER_LR = {"wikimel": 5e-6, "richpediamel": 1e-5, "wikidiverse": 1e-5}
HEAD_LR = 3e-4  # matcher head on frozen features; chosen from the lr sweep in bench/mmoe.md
POSITIVE = ("num_experts", "hidden_dim", "batch_size", "epochs", "rerank_k", "eval_batch_size", "retrieval_rounds")
NOT_NEGATIVE = ("patience", "hard_negatives", "hard_negative_pool", "lr", "weight_decay", "aux_loss_weight",
                "retrieval_loss_weight")


@dataclass(frozen=True)
class TrainingSettings:
    """How the MMoE matcher is trained and evaluated (defaults: the paper's WikiMEL recipe, head-only lr)."""

    preset: str = setting("wikimel", "wikimel | richpediamel | wikidiverse: the experts' top-k (3 / 4 / 2) and "
                          "the paper's learning rate.")
    gate_mode: str = setting("topk", "topk (the paper) | reference (the published code's gate, batch-dependent "
                             "scores; see model/GATES.md).")
    top_k: int = setting(0, "Experts per token; 0 = the preset's.")
    num_experts: int = setting(4, "Experts per mixture (paper: 4).")
    hidden_dim: int = setting(96, "Width of the units (paper: 96).")
    units: tuple[str, ...] = setting(UNITS, "Scoring units kept: text, image, cross.")
    lr_preset: str = setting("head", f"head ({HEAD_LR:g}: the matcher alone on frozen features) | paper (5e-6 "
                             "WikiMEL / 1e-5 others, for fine-tuning all of CLIP).")
    lr: float = setting(0.0, "Learning rate; 0 = from lr_preset.")
    weight_decay: float = setting(1e-4, "AdamW decay (not on biases and norms).")
    batch_size: int = setting(32, "Train mentions per batch (in-batch negatives).")
    epochs: int = setting(20, "Most epochs.")
    patience: int = setting(3, "Epochs without a better dev MRR before stopping; 0 = never stop early.")
    hard_negatives: int = setting(3, "Per mention, from its FAISS candidates (gold excluded).")
    hard_negative_pool: int = setting(20, "Hard negatives are drawn among this many best non-gold candidates.")
    retrieval_loss_weight: float = setting(1.0, "Weight of the cross-entropy of the score's separable part, which "
                                           "the trained index ranks by; 0 = train the total score only.")
    retrieval_rounds: int = setting(2, "Most training rounds: round 1 draws hard negatives from the zero-shot "
                                    "index, each later one from the previous round's trained index; they stop "
                                    "when dev MRR over the trained index stops improving.")
    aux_loss_weight: float = setting(0.01, "Load-balancing loss weight (topk gate only).")
    seed: int = setting(0, "Seed of initialisation, data order and negatives.")
    device: str = setting("auto", "auto (cuda when available) | cpu | cuda | cuda:N.")
    amp: bool = setting(True, "bf16/fp16 autocast on CUDA.")
    rerank_k: int = setting(100, "Candidates reranked per mention.")
    full_kb: bool = setting(False, "Evaluation also scores every KB entity (small KBs, checking the reranking).")
    eval_batch_size: int = setting(64, "Mentions per scoring call.")
    progress: bool = setting(True, "A tqdm progress line in the log during training.")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.units) - set(UNITS))
        if unknown:
            refuse(self, f"units names {unknown}; the units are {', '.join(UNITS)}.")
        object.__setattr__(self, "units", tuple(u for u in UNITS if u in tuple(self.units)))
        self._check()

    def _check(self) -> None:
        """SettingError naming the first bad setting."""
        if self.preset not in PAPER_LR:
            refuse(self, f"preset {self.preset!r} is not one of {', '.join(PAPER_LR)}.")
        if self.gate_mode not in GATE_MODES:
            refuse(self, f"gate_mode {self.gate_mode!r} is not one of {', '.join(GATE_MODES)}.")
        if self.lr_preset not in LR_PRESETS:
            refuse(self, f"lr_preset {self.lr_preset!r} is not one of {', '.join(LR_PRESETS)}.")
        if not self.units:
            refuse(self, f"units must name at least one of {', '.join(UNITS)}.")
        if not 1 <= self.effective_top_k <= self.num_experts:
            refuse(self, f"top_k ({self.effective_top_k}) must be between 1 and num_experts ({self.num_experts}).")
        for name in POSITIVE:
            if getattr(self, name) < 1:
                refuse(self, f"{name} must be at least 1, not {getattr(self, name)}.")
        for name in NOT_NEGATIVE:
            if getattr(self, name) < 0:
                refuse(self, f"{name} must not be negative, not {getattr(self, name)}.")
        if self.hard_negatives > self.hard_negative_pool:
            refuse(self, f"hard_negatives ({self.hard_negatives}) exceeds hard_negative_pool "
                         f"({self.hard_negative_pool}).")
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
        return resolve_device(self.device, TrainingSettings)

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
            refuse(self,
                f"gate_mode 'reference' needs as many text token states as image tokens (the published "
                f"cross-modal router pairs them by position), but the feature store holds {dims['L']} and "
                f"{dims['P1']}; set the feature setting text_tokens to {dims['P1']} or use gate_mode 'topk'.")
        hidden = self.hidden_dim
        return MMoEConfig.from_clip_dims(
            dims["D"], dims["Wt"], dims["Wv"], vision_dim=hidden, text_hidden_dim=hidden,
            vision_hidden_dim=hidden, cross_hidden_dim=hidden, num_experts=self.num_experts,
            top_k=self.effective_top_k, gate_mode=self.gate_mode,
            aux_loss_weight=self.aux_loss_weight if self.gate_mode == "topk" else 0.0, units=self.units)
