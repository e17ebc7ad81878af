"""Switch mixture of experts with two gates: `topk` (the paper) and `reference` (the published code).

Shapes: N items, S positions per item (class vector first, then tokens), D input width, O output width,
X experts. See GATES.md for what the reference gate does differently and why it makes scores batch-dependent.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REFERENCE_GATE_EPS = 1e-6  # the published gate's denominator epsilon


class Expert(nn.Module):
    """Feed-forward block dim -> mult*dim -> out_dim with GELU (dropout between, as the public code)."""

    def __init__(self, dim: int, out_dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.fc_in = nn.Linear(dim, mult * dim)
        self.dropout = nn.Dropout(dropout)
        self.fc_out = nn.Linear(mult * dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.dropout(F.gelu(self.fc_in(x))))


def topk_gate_weights(logits: Tensor, top_k: int) -> Tensor:
    """Per position: softmax over experts, keep the top-k, renormalise over the kept ones.

    logits [..., X] -> weights [..., X] with exactly top_k nonzero entries per position, summing to 1.
    """
    probs = logits.softmax(dim=-1)
    kept, kept_ids = probs.topk(top_k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, kept_ids, kept / kept.sum(dim=-1, keepdim=True))


def reference_gate_weights(logits: Tensor, top_k: int, eps: float = REFERENCE_GATE_EPS) -> Tensor:
    """The published gate, quirks included. logits [N, S, X] -> weights [N, S, X].

    Its top-k mask is scattered along dim 1 (positions) with the expert ids as position indices, so only
    positions < X and expert columns < top_k can be nonzero; weights are then normalised over the batch
    axis (dim 0) and multiplied by the batch size N, so an item's weights depend on the other items.
    """
    probs = logits.softmax(dim=-1)
    _, top_ids = probs.topk(top_k, dim=-1)  # [N, S, top_k], values in [0, X)
    mask = torch.zeros_like(probs).scatter(1, top_ids, 1.0)  # dim 1, not -1: the published quirk
    masked = probs * mask
    return masked / (masked.sum(dim=0, keepdim=True) + eps) * probs.size(0)


def load_balancing_loss(probs: Tensor, weights: Tensor, top_k: int, mask: Optional[Tensor] = None) -> Tensor:
    """Switch-Transformer auxiliary loss X * sum_e f_e * P_e over the valid positions (1.0 when balanced).

    f_e: share of the top-k assignments that went to expert e; P_e: mean router probability of e.
    probs, weights [..., X]; mask [...] (True = real position) or None.
    """
    num_experts = probs.size(-1)
    assigned = (weights > 0).to(probs.dtype)
    if mask is None:
        mask = torch.ones(probs.shape[:-1], dtype=torch.bool, device=probs.device)
    valid = mask.to(probs.dtype).unsqueeze(-1)
    count = valid.sum().clamp_min(1.0)
    fraction_assigned = (assigned * valid).sum(dim=tuple(range(probs.dim() - 1))) / (count * top_k)
    mean_prob = (probs * valid).sum(dim=tuple(range(probs.dim() - 1))) / count
    return num_experts * (fraction_assigned * mean_prob).sum()


class MoEOutput(NamedTuple):
    output: Tensor  # [N, S, O]
    weights: Tensor  # [N, S, X] combine weights actually applied to the experts
    aux_loss: Tensor  # scalar load-balancing loss (0 in reference mode)


class SwitchMoE(nn.Module):
    """Mixture of `num_experts` feed-forward experts; the router may look at a different input than x.

    Experts run densely on all positions (4 small FFNs; sparse dispatch does not pay at this size) and are
    combined with the gate's weights. `gate_mode` is "reference" or "topk" (checked by `MMoEConfig`).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        num_experts: int,
        top_k: int,
        gate_mode: str = "topk",
        mult: int = 4,
        dropout: float = 0.0,
        gate_dim: Optional[int] = None,
    ):
        super().__init__()
        self.top_k = top_k
        self.gate_mode = gate_mode
        self.experts = nn.ModuleList(Expert(dim, out_dim, mult, dropout) for _ in range(num_experts))
        self.router = nn.Linear(gate_dim or dim, num_experts)

    def forward(self, x: Tensor, gate_input: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> MoEOutput:
        """x [N, S, D]; gate_input [N, S, D_gate] (default x); mask [N, S] bool, True = real position.

        The mask only keeps padding out of the auxiliary loss; padded positions still get an output,
        which callers must ignore.
        """
        logits = self.router(x if gate_input is None else gate_input)
        if self.gate_mode == "reference":
            return self._reference_forward(x, logits)
        probs = logits.float().softmax(dim=-1)
        weights = topk_gate_weights(logits.float(), self.top_k)
        aux = load_balancing_loss(probs, weights, self.top_k, mask)
        return MoEOutput(self._combine(x, weights.to(x.dtype)), weights, aux)

    def _reference_forward(self, x: Tensor, logits: Tensor) -> MoEOutput:
        weights = reference_gate_weights(logits, self.top_k)
        weights = _zero_nans(weights)  # the published code zeroes NaN gate weights and NaN expert outputs
        output = sum(w.unsqueeze(-1) * _zero_nans(expert(x)) for w, expert in zip(weights.unbind(-1), self.experts))
        return MoEOutput(output, weights, logits.new_zeros(()))

    def _combine(self, x: Tensor, weights: Tensor) -> Tensor:
        return sum(w.unsqueeze(-1) * expert(x) for w, expert in zip(weights.unbind(-1), self.experts))


def _zero_nans(t: Tensor) -> Tensor:
    return torch.where(torch.isnan(t), torch.zeros_like(t), t)


class Routing(NamedTuple):
    """Where one sequence per item was routed. Leading dims [...] = the items' batch shape.

    class_experts: [..., top_k] long, ids of the experts with the largest weights at the class position,
        largest first; -1 where that weight is 0 (only happens with the reference gate).
    token_counts: [..., X] long, number of real token positions (class position excluded) that gave
        expert e a nonzero weight.
    """

    class_experts: Tensor
    token_counts: Tensor

    def reshape(self, *batch_shape: int) -> "Routing":
        return Routing(
            self.class_experts.reshape(*batch_shape, self.class_experts.size(-1)),
            self.token_counts.reshape(*batch_shape, self.token_counts.size(-1)),
        )


def routing_from_weights(weights: Tensor, top_k: int, mask: Optional[Tensor] = None) -> Routing:
    """weights [N, S, X] (position 0 = class vector), mask [N, S] or None -> Routing with batch shape [N]."""
    class_weights, class_ids = weights[:, 0].topk(top_k, dim=-1)
    class_ids = class_ids.masked_fill(class_weights <= 0, -1)
    routed = weights[:, 1:] > 0
    if mask is not None:
        routed = routed & mask[:, 1:, None]
    return Routing(class_ids, routed.sum(dim=1))


def routing_records(routing: dict[str, Routing]) -> list[dict[str, dict[str, list[int]]]]:
    """One JSON-friendly dict per item of a [N] batch, e.g. for a predictions table:
    [{"text": {"class_experts": [2, 0, 3], "token_counts": [7, 9, 4, 10]}, "image": {...}, ...}, ...]."""
    columns = {name: (r.class_experts.tolist(), r.token_counts.tolist()) for name, r in routing.items()}
    num_items = len(next(iter(columns.values()))[0]) if columns else 0
    return [{name: {"class_experts": experts[i], "token_counts": counts[i]}
             for name, (experts, counts) in columns.items()} for i in range(num_items)]
