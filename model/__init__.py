"""MMoE matcher (Multi-level Mixture of Experts for Multimodal Entity Linking, KDD 2025) in PyTorch.

Typical use:
    config = MMoEConfig.paper("wikimel")                     # topk gate, CLIP ViT-B-32 widths
    matcher = MMoEMatcher(config)
    scores = matcher.score_all_pairs(mentions, entities)     # MMoEFeatures -> MatchScores [M, E]
    loss, parts = mmoe_loss(scores, torch.arange(M))
Reference weights: model.reference.matcher_from_reference(state_dict_or_path, dims). Gates: see GATES.md.
"""

from .checkpoint import (
    CheckpointConfigMismatch,
    LoadedCheckpoint,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from .config import CLIP_DIMS, DATASET_TOP_K, GATE_MODES, UNITS, MMoEConfig
from .features import MMoEFeatures, NonFiniteFeatureError, check_feature_shapes, check_finite_features
from .losses import LossOutput, mmoe_loss
from .metrics import HITS_AT, gold_ranks, ranking_metrics
from .mmoe import ROUTED_SEQUENCES, CrossModalUnit, Encoding, IntraModalUnit, MatchScores, MMoEMatcher
from .moe import Routing, SwitchMoE, load_balancing_loss, reference_gate_weights, routing_records, topk_gate_weights
from .reference import (
    config_from_reference_dims,
    convert_reference_state_dict,
    load_reference_weights,
    matcher_from_reference,
    read_reference_state_dict,
)
from .retrieval import retrieval_dim, retrieval_vectors

__all__ = [
    "CLIP_DIMS", "DATASET_TOP_K", "GATE_MODES", "HITS_AT", "ROUTED_SEQUENCES", "UNITS",
    "CheckpointConfigMismatch", "CrossModalUnit", "Encoding", "IntraModalUnit", "LoadedCheckpoint", "LossOutput",
    "MMoEConfig", "MMoEFeatures", "MMoEMatcher", "MatchScores", "NonFiniteFeatureError", "Routing", "SwitchMoE",
    "check_feature_shapes", "check_finite_features", "config_from_reference_dims", "convert_reference_state_dict",
    "gold_ranks", "load_balancing_loss", "load_checkpoint", "load_reference_weights", "matcher_from_reference",
    "mmoe_loss", "ranking_metrics", "read_checkpoint_config", "read_reference_state_dict",
    "reference_gate_weights", "retrieval_dim", "retrieval_vectors", "routing_records", "save_checkpoint",
    "topk_gate_weights",
]
