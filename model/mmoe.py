"""The MMoE matcher: intra-level text and vision units, the inter-level cross-modal unit, image projections.

Scoring runs in two steps so that entity representations can be computed once and reused:
  encode_mentions / encode_entities: per item, through projections, LayerNorms and the units' experts;
  score_encoded: per mention-entity pair, attention and dot products.
Layouts: all pairs (entities with batch shape [E] -> scores [M, E]) and per-mention candidates
(entities with batch shape [M, K] -> scores [M, K]).

Shapes: M mentions, E entities, K candidates per mention, N items of one side, Lt/Li text/image tokens,
D/H/C unit input/hidden/cross widths.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .config import MMoEConfig
from .features import MMoEFeatures, check_feature_shapes
from .moe import MoEOutput, Routing, SwitchMoE, routing_from_weights
from .retrieval import retrieval_vectors

# Routing keys, one per expert-routed sequence of an item.
ROUTED_SEQUENCES = ("text", "image", "cross_text_image", "cross_image_text")


class IntraEncoding(NamedTuple):
    """One item side of an intra-level unit; leading dims [*B]."""

    cls: Tensor  # [*B, D] normalised input class vector, used by the global-to-global score
    routed_cls: Tensor  # [*B, H] class vector after the experts
    routed_tokens: Tensor  # [*B, L, H] tokens after the experts
    mask: Optional[Tensor]  # [*B, L] True = real token, or None


class CrossEncoding(NamedTuple):
    """One item side of the cross-modal unit; leading dims [*B]."""

    text_over_image: Tensor  # [*B, C] text class vector fused with its attention over image tokens
    image_over_text: Tensor  # [*B, C] image class vector fused with its attention over text tokens


@dataclass
class Encoding:
    """Everything the pair scoring needs about a batch of mentions or entities (None: unit disabled)."""

    text: Optional[IntraEncoding]
    image: Optional[IntraEncoding]
    cross: Optional[CrossEncoding]
    aux_loss: Tensor  # scalar load-balancing loss of this side's experts (unweighted; 0 in reference mode)
    routing: Optional[dict[str, Routing]]  # keys ROUTED_SEQUENCES, batch shape [*B]; None unless requested

    @property
    def batch_shape(self) -> torch.Size:
        if self.cross is not None:
            return self.cross.text_over_image.shape[:-1]
        return (self.text if self.text is not None else self.image).cls.shape[:-1]

    def map_batch(self, fn) -> "Encoding":
        """Apply fn to every per-item tensor (fn must keep the trailing feature dims)."""
        return Encoding(
            text=None if self.text is None else _map_tuple(self.text, fn),
            image=None if self.image is None else _map_tuple(self.image, fn),
            cross=None if self.cross is None else _map_tuple(self.cross, fn),
            aux_loss=self.aux_loss,
            routing=None if self.routing is None else {k: _map_tuple(r, fn) for k, r in self.routing.items()},
        )


@dataclass
class MatchScores:
    """Scores of mention-entity pairs: [M, E] (all pairs) or [M, K] (candidates)."""

    total: Tensor  # mean of the unit scores (of the three, or of `config.units`)
    text: Optional[Tensor]  # None when the unit is disabled by `config.units`
    image: Optional[Tensor]
    cross: Optional[Tensor]
    aux_loss: Tensor  # scalar, already multiplied by config.aux_loss_weight (0 in reference mode)
    mention_routing: Optional[dict[str, Routing]] = None  # batch shape [M]
    entity_routing: Optional[dict[str, Routing]] = None  # batch shape [E] or [M, K]
    retrieval: Optional[Tensor] = None  # the separable part of total (model/retrieval.py), same shape


class RoutedSequence(NamedTuple):
    moe: MoEOutput
    mask: Optional[Tensor]  # [N, S], position 0 = class vector


def _map_tuple(nt: NamedTuple, fn) -> NamedTuple:
    return type(nt)(*(None if t is None else fn(t) for t in nt))


def _with_class(cls: Tensor, tokens: Tensor) -> Tensor:
    """cls [N, D], tokens [N, L, D] -> [N, 1 + L, D]."""
    return torch.cat([cls.unsqueeze(1), tokens], dim=1)


def _mask_with_class(mask: Optional[Tensor]) -> Optional[Tensor]:
    """[N, L] -> [N, 1 + L] (the class position is always real)."""
    return None if mask is None else torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)


def _hide_padding(logits: Tensor, key_mask: Optional[Tensor]) -> Tensor:
    """Give padded key positions the lowest logit; key_mask broadcasts against logits' key axis (last)."""
    if key_mask is None:
        return logits
    return logits.masked_fill(~key_mask, torch.finfo(logits.dtype).min)


def pair_dot(mentions: Tensor, entities: Tensor) -> Tensor:
    """mentions [M, D], entities [B, E, D] with B = 1 (all pairs) or M (own candidates) -> [M, E]."""
    if entities.size(0) == 1:
        return mentions @ entities[0].transpose(0, 1)
    return torch.einsum("md,med->me", mentions, entities)


class IntraModalUnit(nn.Module):
    """Text or vision unit: experts over [class; tokens], then global-to-global + global-to-local scores."""

    def __init__(self, dim: int, hidden_dim: int, config: MMoEConfig):
        super().__init__()
        self.moe = SwitchMoE(dim, hidden_dim, config.num_experts, config.top_k, config.gate_mode,
                             config.expert_mult, config.dropout)
        self.query = nn.Linear(hidden_dim, hidden_dim)
        self.key = nn.Linear(hidden_dim, hidden_dim)
        self.value = nn.Linear(hidden_dim, hidden_dim)
        self.context_norm = nn.LayerNorm(hidden_dim)
        self.scale = 1.0 / math.sqrt(hidden_dim)

    def encode(self, cls: Tensor, tokens: Tensor, mask: Optional[Tensor]) -> tuple[IntraEncoding, RoutedSequence]:
        """cls [N, D], tokens [N, L, D], mask [N, L] or None."""
        seq_mask = _mask_with_class(mask)
        routed = self.moe(_with_class(cls, tokens), mask=seq_mask)
        encoding = IntraEncoding(cls, routed.output[:, 0], routed.output[:, 1:], mask)
        return encoding, RoutedSequence(routed, seq_mask)

    def score(self, mentions: IntraEncoding, entities: IntraEncoding) -> Tensor:
        """mentions: batch [M]; entities: batch [B, E], B = 1 (all pairs) or M (candidates) -> [M, E].

        Global-to-local: the entity's routed tokens attend over the mention's routed tokens; the contexts are
        averaged over the entity's tokens, normalised and dotted with the entity's routed class vector.
        """
        global_to_global = pair_dot(mentions.cls, entities.cls)
        query = self.query(entities.routed_tokens)  # [B, E, Le, H]
        key = self.key(mentions.routed_tokens)  # [M, Lm, H]
        value = self.value(mentions.routed_tokens)  # [M, Lm, H]
        logits = _token_pair_logits(query, key) * self.scale  # [M, E, Le, Lm]
        key_mask = None if mentions.mask is None else mentions.mask[:, None, None, :]
        probs = _hide_padding(logits, key_mask).softmax(dim=-1)
        # mean over the entity's real tokens of (probs @ value) == (mean of probs) @ value, and cheaper
        mean_probs = _mean_over_queries(probs, entities.mask)  # [M, E, Lm]
        context = self.context_norm(torch.einsum("mel,mlh->meh", mean_probs, value))
        global_to_local = (context * entities.routed_cls).sum(dim=-1)
        return (global_to_global + global_to_local) / 2


def _token_pair_logits(entity_queries: Tensor, mention_keys: Tensor) -> Tensor:
    """entity_queries [B, E, Le, H], mention_keys [M, Lm, H] -> [M, E, Le, Lm].

    B = 1 becomes one matrix product, without copying the queries once per mention.
    """
    if entity_queries.size(0) == 1:
        return torch.einsum("eqh,mlh->meql", entity_queries[0], mention_keys)
    return torch.einsum("meqh,mlh->meql", entity_queries, mention_keys)


def _mean_over_queries(probs: Tensor, query_mask: Optional[Tensor]) -> Tensor:
    """probs [M, E, Lq, Lk], query_mask [B, E, Lq] or None -> mean over real query positions [M, E, Lk]."""
    if query_mask is None:
        return probs.mean(dim=-2)
    weights = query_mask.to(probs.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return (weights.unsqueeze(-2) @ probs).squeeze(-2)  # [B, E, 1, Lq] @ [M, E, Lq, Lk]


class CrossModalUnit(nn.Module):
    """Inter-level unit: [text class; image tokens] and [image class; text tokens] through one shared MoE
    whose router looks at the other modality, then gated cross-modal attention and dot-product scores."""

    def __init__(self, text_dim: int, vision_dim: int, config: MMoEConfig):
        super().__init__()
        width = config.cross_hidden_dim
        self.gate_mode = config.gate_mode
        self.text_proj = nn.Linear(text_dim, width)
        self.image_proj = nn.Linear(vision_dim, width)
        self.moe = SwitchMoE(width, width, config.num_experts, config.top_k, config.gate_mode,
                             config.expert_mult, config.dropout)
        self.fusion_gate = nn.Linear(width, 1)
        self.fusion_norm = nn.LayerNorm(width)
        self.gate_scale = 1.0 / math.sqrt(width)

    def encode(self, text_cls: Tensor, text_tokens: Tensor, text_mask: Optional[Tensor], image_cls: Tensor,
               image_tokens: Tensor, is_entity: bool) -> tuple[CrossEncoding, dict[str, RoutedSequence]]:
        """text_cls [N, Dt], text_tokens [N, Lt, Dt], text_mask [N, Lt] or None, image_cls [N, Dv],
        image_tokens [N, Li, Dv]."""
        text_cls, text_tokens = self.text_proj(text_cls), self.text_proj(text_tokens)
        image_cls, image_tokens = self.image_proj(image_cls), self.image_proj(image_tokens)
        text_image = _with_class(text_cls, image_tokens)  # [N, 1 + Li, C]
        image_text = _with_class(image_cls, text_tokens)  # [N, 1 + Lt, C]
        gate_text_image, gate_image_text = self._router_inputs(text_cls, text_tokens, text_mask, image_cls,
                                                               image_tokens)
        text_mask_seq = _mask_with_class(text_mask)
        routed_ti = self.moe(text_image, gate_text_image)
        routed_it = self.moe(image_text, gate_image_text, mask=text_mask_seq)
        encoding = CrossEncoding(
            text_over_image=self._fuse(text_cls, routed_ti.output, None, is_entity),
            image_over_text=self._fuse(image_cls, routed_it.output, text_mask, is_entity),
        )
        return encoding, {"cross_text_image": RoutedSequence(routed_ti, None),
                          "cross_image_text": RoutedSequence(routed_it, text_mask_seq)}

    def _router_inputs(self, text_cls, text_tokens, text_mask, image_cls, image_tokens) -> tuple[Tensor, Tensor]:
        """What the router sees for [text class; image tokens] and for [image class; text tokens].

        Class position: the other modality's class vector (both modes). Token positions: in reference mode
        the other modality's token at the same index (the published pairing, needs Lt == Li); in topk mode
        the other modality's tokens pooled by attention from this token (any lengths, padding excluded).
        """
        if self.gate_mode == "reference":
            return _with_class(image_cls, text_tokens), _with_class(text_cls, image_tokens)
        text_seen_by_image = self._attend(image_tokens, text_tokens, text_mask)  # [N, Li, C]
        image_seen_by_text = self._attend(text_tokens, image_tokens, None)  # [N, Lt, C]
        return _with_class(image_cls, text_seen_by_image), _with_class(text_cls, image_seen_by_text)

    def _attend(self, queries: Tensor, keys: Tensor, key_mask: Optional[Tensor]) -> Tensor:
        """Parameter-free scaled dot-product attention: queries [N, Lq, C], keys [N, Lk, C] -> [N, Lq, C]."""
        logits = queries @ keys.transpose(-1, -2) * self.gate_scale
        key_mask = None if key_mask is None else key_mask[:, None, :]
        return _hide_padding(logits, key_mask).softmax(dim=-1) @ keys

    def _fuse(self, projected_cls: Tensor, routed: Tensor, token_mask: Optional[Tensor], is_entity: bool) -> Tensor:
        """projected_cls [N, C], routed [N, 1 + L, C], token_mask [N, L] or None -> [N, C].

        As published: the routed class vector attends (unscaled) over the routed tokens; a tanh gate scales
        the pre-expert class vector before adding the context. The gate reads the context for entities but
        the pre-expert class vector for mentions (the published asymmetry, kept in both modes).
        """
        routed_cls, routed_tokens = routed[:, 0], routed[:, 1:]
        logits = torch.einsum("nc,nlc->nl", routed_cls, routed_tokens)
        probs = _hide_padding(logits, token_mask).softmax(dim=-1)
        context = torch.einsum("nl,nlc->nc", probs, routed_tokens)
        gate = torch.tanh(self.fusion_gate(context if is_entity else projected_cls))  # [N, 1]
        return self.fusion_norm(projected_cls * gate + context)

    def score(self, mentions: CrossEncoding, entities: CrossEncoding) -> Tensor:
        """mentions: batch [M]; entities: batch [B, E] -> [M, E]."""
        text_image = pair_dot(mentions.text_over_image, entities.text_over_image)
        image_text = pair_dot(mentions.image_over_text, entities.image_over_text)
        return (text_image + image_text) / 2


class MMoEMatcher(nn.Module):
    """Scores mentions against entities from raw CLIP features (see MMoEFeatures)."""

    def __init__(self, config: MMoEConfig):
        super().__init__()
        self.config = config
        self.image_embed_proj = nn.Linear(config.embed_dim, config.vision_dim)
        self.image_token_proj = nn.Linear(config.image_token_dim, config.vision_dim)
        self.text_embed_norm = nn.LayerNorm(config.text_dim)
        self.text_token_norm = nn.LayerNorm(config.text_dim)
        self.image_embed_norm = nn.LayerNorm(config.vision_dim)
        self.image_token_norm = nn.LayerNorm(config.vision_dim)
        units = config.units  # a disabled unit (ablation) has no parameters and costs nothing
        self.text_unit = IntraModalUnit(config.text_dim, config.text_hidden_dim, config) if "text" in units else None
        self.vision_unit = (IntraModalUnit(config.vision_dim, config.vision_hidden_dim, config)
                            if "image" in units else None)
        self.cross_unit = CrossModalUnit(config.text_dim, config.vision_dim, config) if "cross" in units else None

    @property
    def reference_mode(self) -> bool:
        return self.config.gate_mode == "reference"

    # --- per-item encoding -------------------------------------------------------------------------------

    def encode_mentions(self, features: MMoEFeatures, with_routing: bool = False) -> Encoding:
        return self._encode(features, is_entity=False, with_routing=with_routing)

    def encode_entities(self, features: MMoEFeatures, with_routing: bool = False) -> Encoding:
        """Entities with batch shape [E] or [M, K]. In topk mode an entity's encoding depends on that entity
        alone, so a KB's encodings can be computed once (under no_grad) and scored in chunks."""
        return self._encode(features, is_entity=True, with_routing=with_routing)

    def encode_for_retrieval(self, features: MMoEFeatures, is_entity: bool) -> Encoding:
        """What `retrieval_vectors` reads (class vectors, the cross unit), without the intra units' experts
        over tokens, whose routed states feed only the pairwise global-to-local term: a cheaper encoding
        with the same retrieval vectors."""
        return self._encode(features, is_entity, with_routing=False, retrieval_only=True)

    def _encode(self, features: MMoEFeatures, is_entity: bool, with_routing: bool,
                retrieval_only: bool = False) -> Encoding:
        cfg = self.config
        check_feature_shapes(features, cfg.embed_dim, cfg.text_dim, cfg.image_token_dim)
        batch_shape = features.batch_shape
        self._check_reference_inputs(features)
        flat = features.flatten_batch()
        text_mask = None if self.reference_mode else flat.text_mask
        image_embeds, image_tokens = _zero_missing_images(flat)

        text_cls = self.text_embed_norm(flat.text_embeds)
        text_tokens = self.text_token_norm(flat.text_tokens)
        image_cls = self.image_embed_norm(self.image_embed_proj(image_embeds))
        image_tokens = self.image_token_norm(self.image_token_proj(image_tokens))

        text = image = cross = None
        routed: dict[str, RoutedSequence] = {}
        if self.text_unit is not None:
            if retrieval_only:
                text = IntraEncoding(text_cls, None, None, text_mask)
            else:
                text, routed["text"] = self.text_unit.encode(text_cls, text_tokens, text_mask)
        if self.vision_unit is not None:
            if retrieval_only:
                image = IntraEncoding(image_cls, None, None, None)
            else:
                image, routed["image"] = self.vision_unit.encode(image_cls, image_tokens, None)
        if self.cross_unit is not None:
            cross, cross_routed = self.cross_unit.encode(text_cls, text_tokens, text_mask, image_cls, image_tokens,
                                                         is_entity)
            routed.update(cross_routed)
        aux_loss = (torch.stack([r.moe.aux_loss.float() for r in routed.values()]).mean() if routed
                    else text_cls.new_zeros(()))
        routing = None
        if with_routing:
            routing = {name: routing_from_weights(r.moe.weights, cfg.top_k, r.mask) for name, r in routed.items()}
        encoding = Encoding(text, image, cross, aux_loss, routing)
        return encoding.map_batch(lambda t: t.reshape(*batch_shape, *t.shape[1:]))

    def _check_reference_inputs(self, features: MMoEFeatures) -> None:
        if not self.reference_mode:
            return
        if len(features.batch_shape) != 1:
            raise ValueError(
                "reference mode scores all pairs only: its gate normalises over the batch, so a per-mention "
                "candidate batch has no published meaning; use gate_mode='topk' or score_all_pairs per mention"
            )
        if features.text_tokens.shape[1] != features.image_tokens.shape[1]:
            raise ValueError(
                f"reference mode needs as many text tokens as image tokens (its cross-modal router pairs them "
                f"by position), got {features.text_tokens.shape[1]} and {features.image_tokens.shape[1]}"
            )
        if features.text_mask is not None and not bool(features.text_mask.all()):
            warnings.warn("reference mode ignores text_mask: the published code attends over padding tokens",
                          stacklevel=4)

    # --- pair scoring ------------------------------------------------------------------------------------

    def score_encoded(self, mentions: Encoding, entities: Encoding) -> MatchScores:
        """mentions: batch [M]; entities: batch [E] (all pairs -> [M, E]) or [M, K] (candidates -> [M, K])."""
        num_mentions = _single_batch_dim(mentions.batch_shape, "mentions")
        entity_shape = entities.batch_shape
        if len(entity_shape) == 1:
            paired = entities.map_batch(lambda t: t.unsqueeze(0))
        elif len(entity_shape) == 2 and entity_shape[0] == num_mentions:
            paired = entities
        else:
            raise ValueError(f"entities must have batch shape [E] or [M={num_mentions}, K], got {list(entity_shape)}")
        text = None if self.text_unit is None else self.text_unit.score(mentions.text, paired.text)
        image = None if self.vision_unit is None else self.vision_unit.score(mentions.image, paired.image)
        cross = None if self.cross_unit is None else self.cross_unit.score(mentions.cross, paired.cross)
        enabled = [unit for unit in (text, image, cross) if unit is not None]
        aux_loss = self.config.aux_loss_weight * (mentions.aux_loss + entities.aux_loss) / 2
        retrieval = pair_dot(retrieval_vectors(mentions, self.config), retrieval_vectors(paired, self.config))
        return MatchScores(sum(enabled) / len(enabled), text, image, cross, aux_loss,
                           mentions.routing, entities.routing, retrieval)

    def retrieval_vectors(self, encoding: Encoding) -> Tensor:
        """Per item of `encoding` ([*B]), the vector whose inner products are the separable part of the total
        score ([*B, R]; see model/retrieval.py): what a FAISS index of a trained matcher holds."""
        return retrieval_vectors(encoding, self.config)

    def score_all_pairs(self, mentions: MMoEFeatures, entities: MMoEFeatures,
                        return_routing: bool = False) -> MatchScores:
        """Every mention against every entity: mentions [M], entities [E] -> scores [M, E].

        For training with in-batch negatives (entity i = gold of mention i) and for scoring a KB in chunks.
        In reference mode the result depends on which mentions and entities share the call (see GATES.md).
        """
        return self.score_encoded(self.encode_mentions(mentions, return_routing),
                                  self.encode_entities(entities, return_routing))

    def score_candidates(self, mentions: MMoEFeatures, candidates: MMoEFeatures,
                         return_routing: bool = False) -> MatchScores:
        """Each mention against its own K candidates: mentions [M], candidates [M, K] -> scores [M, K].

        Costs M*K pairs (not M*M*K). topk mode only: reference mode raises ValueError.
        """
        if self.reference_mode:
            raise ValueError(
                "score_candidates is not available in reference mode: the published gate normalises over "
                "the batch, so candidate scores would not match any published computation; call "
                "score_all_pairs(mention_i, candidates_of_i) per mention, or use gate_mode='topk'"
            )
        num_mentions = _single_batch_dim(mentions.batch_shape, "mentions")
        if len(candidates.batch_shape) != 2 or candidates.batch_shape[0] != num_mentions:
            raise ValueError(f"candidates must have batch shape [M={num_mentions}, K], "
                             f"got {list(candidates.batch_shape)}")
        return self.score_encoded(self.encode_mentions(mentions, return_routing),
                                  self.encode_entities(candidates, return_routing))

    def forward(self, mentions: MMoEFeatures, entities: MMoEFeatures, return_routing: bool = False) -> MatchScores:
        return self.score_all_pairs(mentions, entities, return_routing)


def _single_batch_dim(shape: torch.Size, what: str) -> int:
    if len(shape) != 1:
        raise ValueError(f"{what} must have a single batch dimension, got batch shape {list(shape)}")
    return shape[0]


def _zero_missing_images(features: MMoEFeatures) -> tuple[Tensor, Tensor]:
    """Zero image features of items without an image (flat batch [N]).

    The published pipeline feeds an all-zero pixel image to CLIP for such items; the matcher only sees
    features, so it uses the feature-level zero image (whatever the rows held, NaN included). To reproduce
    the published inputs exactly, pass CLIP's features of a zero pixel image instead and leave has_image None.
    """
    if features.has_image is None:
        return features.image_embeds, features.image_tokens
    keep = features.has_image
    embeds = torch.where(keep[:, None], features.image_embeds, torch.zeros_like(features.image_embeds))
    tokens = torch.where(keep[:, None, None], features.image_tokens, torch.zeros_like(features.image_tokens))
    return embeds, tokens

