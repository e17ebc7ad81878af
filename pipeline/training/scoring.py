"""Ranking mentions with a trained matcher: rerank the FAISS top-K, or score the whole KB, from entity
encodings computed once (`encodings.EncodedEntities`).

Conventions. Ranks are 1-based and ties count against the gold (`model.gold_ranks`). A mention whose gold is
not among the scored entities, has no candidates, or has unusable features is a miss with rank
`miss_rank` = K + 1 when reranking top-K, E + 1 when scoring E entities; it is never dropped. Nil mentions
are ranked too (their top entities are kept) but have no gold rank.

Reference mode. Its gate normalises over the batch, so scores depend on which items share a call. Full-KB
scoring follows the public evaluation: the KB is encoded in chunks of 6000 entities in store order and
mentions in chunks of 20. Reranking encodes each mention alone and its K candidates as one batch, which is
the only candidate-local reading of the public code (it never reranks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from model import UNITS, Encoding, MatchScores, MMoEMatcher, gold_ranks, routing_records
from pipeline.features.store import FeatureStore
from pipeline.training.data import Mentions, load_features, read_features
from pipeline.training.encodings import REFERENCE_MENTION_CHUNK, EncodedEntities

TOP_SAVED = 10  # entities kept per mention in the predictions
PAIR_TOKEN_BUDGET = 1 << 23  # mention x entity x token x token attention logits per scoring call (32 MB fp32)


@dataclass
class Ranking:
    """Per ranked mention, sorted by position in Mentions."""

    positions: np.ndarray  # into Mentions
    gold_rank: np.ndarray  # int64; miss_rank for misses; 0 for nil mentions (no gold)
    scored: np.ndarray  # int32 entities scored per mention
    top_rows: list[np.ndarray]  # entity store rows, best first
    top_scores: list[np.ndarray]
    top_units: dict[str, list[np.ndarray]]  # per enabled unit, the top entities' unit scores
    routing: list[str | None]  # JSON, per mention
    problems: list[str | None]
    miss_rank: int
    scoring: str  # "rerank@K" | "full_kb"

    def ranks_of(self, positions: np.ndarray) -> np.ndarray:
        where = {p: i for i, p in enumerate(self.positions.tolist())}
        return self.gold_rank[[where[p] for p in positions.tolist()]]


@dataclass
class _Pending:
    """Rankings collected batch by batch."""

    positions: list = field(default_factory=list)
    gold_rank: list = field(default_factory=list)
    scored: list = field(default_factory=list)
    top_rows: list = field(default_factory=list)
    top_scores: list = field(default_factory=list)
    top_units: dict = field(default_factory=lambda: {unit: [] for unit in UNITS})
    routing: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    def add_unscored(self, position: int, problem: str | None, miss_rank: int, nil: bool) -> None:
        self.positions.append(position)
        self.gold_rank.append(0 if nil else miss_rank)
        self.scored.append(0)
        self.top_rows.append(np.zeros(0, np.int64))
        self.top_scores.append(np.zeros(0, np.float32))
        for unit in UNITS:
            self.top_units[unit].append(np.zeros(0, np.float32))
        self.routing.append(None)
        self.problems.append(problem)

    def finish(self, miss_rank: int, scoring: str, units: tuple[str, ...]) -> Ranking:
        order = np.argsort(np.asarray(self.positions, dtype=np.int64), kind="stable")

        def sort(values):
            return [values[i] for i in order]

        return Ranking(np.asarray(self.positions, np.int64)[order], np.asarray(self.gold_rank, np.int64)[order],
                       np.asarray(self.scored, np.int32)[order], sort(self.top_rows), sort(self.top_scores),
                       {unit: sort(self.top_units[unit]) for unit in units}, sort(self.routing),
                       sort(self.problems), miss_rank, scoring)


# -- ranking --------------------------------------------------------------------------------------------


def rank_mentions(matcher: MMoEMatcher, mentions: Mentions, mention_store: FeatureStore,
                  entity_store: FeatureStore, positions: np.ndarray, device: torch.device, rerank_k: int,
                  full_kb: bool = False, batch_size: int = 64, entities: EncodedEntities | None = None) -> Ranking:
    """Rank the entities for the mentions at `positions`: their top `rerank_k` candidates, or every entity
    of the store (`full_kb`). Pass `entities` to reuse encodings across calls (topk mode)."""
    matcher.eval()
    positions = np.asarray(positions, dtype=np.int64)
    if full_kb:
        return _rank_full_kb(matcher, mentions, mention_store, entity_store, positions, device, batch_size, entities)
    if matcher.reference_mode:
        return _rerank_reference(matcher, mentions, mention_store, entity_store, positions, device, rerank_k)
    return _rerank(matcher, mentions, mention_store, entity_store, positions, device, rerank_k, batch_size, entities)


def candidate_union(mentions: Mentions, positions: np.ndarray, rerank_k: int) -> np.ndarray:
    rows = [mentions.candidates[p][:rerank_k] for p in positions.tolist()]
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def _rerank(matcher, mentions, mention_store, entity_store, positions, device, k, batch_size, entities) -> Ranking:
    pending = _Pending()
    miss_rank = k + 1
    scoreable = _set_aside_unscoreable(mentions, positions, pending, miss_rank, need_candidates=True)
    if entities is None:
        entities = EncodedEntities.build(matcher, entity_store, candidate_union(mentions, scoreable, k), device)
    with torch.inference_mode():
        for batch in _batches(scoreable, batch_size):
            encoded, batch, problems = _encode_mentions(matcher, mentions, mention_store, batch, device)
            _record_problems(pending, mentions, problems, miss_rank)
            if len(batch) == 0:
                continue
            lists = [mentions.candidates[p][:k] for p in batch.tolist()]
            width = max(len(rows) for rows in lists)
            columns = np.stack([np.pad(rows, (0, width - len(rows)), constant_values=rows[0]) for rows in lists])
            valid = torch.as_tensor(np.stack([np.arange(width) < len(rows) for rows in lists]), device=device)
            scores = matcher.score_encoded(encoded, entities.gather(columns))
            gold = [_column_of(rows, mentions.gold_row[p]) for rows, p in zip(lists, batch.tolist())]
            _collect(pending, mentions, batch, scores, valid, columns, gold, miss_rank, encoded)
    return pending.finish(miss_rank, f"rerank@{k}", matcher.config.units)


def _rank_full_kb(matcher, mentions, mention_store, entity_store, positions, device, batch_size, entities) -> Ranking:
    pending = _Pending()
    if entities is None or len(entities) != len(entity_store):
        entities = EncodedEntities.build(matcher, entity_store, np.arange(len(entity_store)), device)
    miss_rank = len(entities) + 1
    scoreable = _set_aside_unscoreable(mentions, positions, pending, miss_rank, need_candidates=False)
    reference = matcher.reference_mode
    with torch.inference_mode():
        for batch in _batches(scoreable, REFERENCE_MENTION_CHUNK if reference else batch_size):
            encoded, batch, problems = _encode_mentions(matcher, mentions, mention_store, batch, device)
            _record_problems(pending, mentions, problems, miss_rank)
            if len(batch) == 0:
                continue
            scores = _score_all_chunks(matcher, encoded, entities)
            valid = torch.ones(scores.total.shape, dtype=torch.bool, device=device)
            columns = np.broadcast_to(entities.rows, (len(batch), len(entities.rows)))
            gold = [int(entities.column[row]) if row >= 0 else -1 for row in mentions.gold_row[batch].tolist()]
            _collect(pending, mentions, batch, scores, valid, columns, gold, miss_rank, encoded)
    return pending.finish(miss_rank, "full_kb", matcher.config.units)


def _rerank_reference(matcher, mentions, mention_store, entity_store, positions, device, k) -> Ranking:
    pending = _Pending()
    miss_rank = k + 1
    scoreable = _set_aside_unscoreable(mentions, positions, pending, miss_rank, need_candidates=True)
    with torch.inference_mode():
        for position in scoreable.tolist():
            encoded, batch, problems = _encode_mentions(matcher, mentions, mention_store, np.array([position]),
                                                        device)
            _record_problems(pending, mentions, problems, miss_rank)
            if len(batch) == 0:
                continue
            rows = mentions.candidates[position][:k]
            features = read_features(entity_store, rows, entity_store.ids[rows], device, reference=True)
            scores = matcher.score_encoded(encoded, matcher.encode_entities(features))
            valid = torch.ones(scores.total.shape, dtype=torch.bool, device=device)
            gold = [_column_of(rows, mentions.gold_row[position])]
            _collect(pending, mentions, batch, scores, valid, rows[None], gold, miss_rank, encoded)
    return pending.finish(miss_rank, f"rerank@{k}", matcher.config.units)


def _set_aside_unscoreable(mentions: Mentions, positions: np.ndarray, pending: _Pending, miss_rank: int,
                           need_candidates: bool) -> np.ndarray:
    """Record mentions that cannot be scored as misses with their problem; return the others."""
    keep = []
    for position in positions.tolist():
        no_candidates = need_candidates and len(mentions.candidates[position]) == 0
        if mentions.mention_row[position] < 0 or no_candidates:
            problem = mentions.problem_of(position) or "no candidates"
            pending.add_unscored(position, problem, miss_rank, bool(mentions.is_nil[position]))
        else:
            keep.append(position)
    keep = np.asarray(keep, dtype=np.int64)
    return keep[np.argsort(mentions.mention_row[keep], kind="stable")]  # read the store front to back


def _batches(positions: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(positions), size):
        yield positions[start:start + size]


def _encode_mentions(matcher, mentions: Mentions, store: FeatureStore, batch: np.ndarray, device):
    """Encode the batch's usable mentions; unusable ones (NaN/Inf, no text) come back as (position, problem)."""
    rows = mentions.mention_row[batch]
    features, problems = load_features(store, rows, device, matcher.reference_mode)
    usable = np.asarray([problem is None for problem in problems])
    failed = [(int(p), f"mention features: {problem}") for p, problem in zip(batch, problems) if problem]
    if not usable.all():
        features = features.select(torch.as_tensor(usable, device=device))
    batch = batch[usable]
    encoded = matcher.encode_mentions(features, with_routing=True) if len(batch) else None
    return encoded, batch, failed


def _record_problems(pending: _Pending, mentions: Mentions, failed: list, miss_rank: int) -> None:
    for position, problem in failed:
        pending.add_unscored(position, problem, miss_rank, bool(mentions.is_nil[position]))


def _entity_chunk(mentions: Encoding, entities: Encoding) -> int:
    """Entities per all-pairs scoring call, so that the token-pair attention logits fit PAIR_TOKEN_BUDGET."""
    pairs_per_entity = 1
    for unit in ("text", "image"):
        mention_side, entity_side = getattr(mentions, unit), getattr(entities, unit)
        if mention_side is not None:
            tokens = mention_side.routed_tokens.shape[-2] * entity_side.routed_tokens.shape[-2]
            pairs_per_entity = max(pairs_per_entity, tokens * mention_side.routed_tokens.shape[0])
    return max(1, PAIR_TOKEN_BUDGET // pairs_per_entity)


def _column_of(rows: np.ndarray, gold_row: int) -> int:
    hits = np.flatnonzero(rows == gold_row) if gold_row >= 0 else []
    return int(hits[0]) if len(hits) else -1


def _score_all_chunks(matcher: MMoEMatcher, mentions: Encoding, entities: EncodedEntities) -> MatchScores:
    """All pairs of the mentions and every encoded entity, chunk by chunk, into preallocated [M, E] outputs
    (appending per-chunk results between large freed temporaries fragments the heap: GBs at 100k entities)."""
    size = _entity_chunk(mentions, entities.encoding)
    out: dict[str, torch.Tensor | None] = {}
    for start, chunk in entities.chunks(size):
        part = matcher.score_encoded(mentions, chunk)
        for name in ("total", *UNITS):
            values = getattr(part, name)
            if name not in out:
                out[name] = None if values is None else values.new_empty(values.shape[0], len(entities))
            if values is not None:
                out[name][:, start:start + values.shape[1]] = values
    return MatchScores(out["total"], out["text"], out["image"], out["cross"], mentions.aux_loss)


def _collect(pending: _Pending, mentions: Mentions, batch: np.ndarray, scores, valid: torch.Tensor,
             columns: np.ndarray, gold: list[int], miss_rank: int, encoded: Encoding) -> None:
    total = scores.total.float().masked_fill(~valid, torch.finfo(torch.float32).min)
    gold_t = torch.as_tensor(gold, dtype=torch.long, device=total.device)
    ranks = gold_ranks(total, gold_t, miss_rank=miss_rank).cpu().numpy()
    keep = min(TOP_SAVED, total.shape[1])
    top_scores, top_columns = total.topk(keep, dim=1)
    top_valid = valid.gather(1, top_columns).cpu().numpy()
    top_columns_np = top_columns.cpu().numpy()
    unit_tops = {unit: getattr(scores, unit).float().gather(1, top_columns).cpu().numpy()
                 for unit in UNITS if getattr(scores, unit) is not None}
    records = routing_records(encoded.routing)
    top_scores = top_scores.cpu().numpy()
    for i, position in enumerate(batch.tolist()):
        chosen = top_valid[i]
        nil = bool(mentions.is_nil[position])
        pending.positions.append(position)
        pending.gold_rank.append(0 if nil else int(ranks[i]))
        pending.scored.append(int(valid[i].sum()))
        pending.top_rows.append(np.asarray(columns[i][top_columns_np[i][chosen]], dtype=np.int64))
        pending.top_scores.append(top_scores[i][chosen].astype(np.float32))
        for unit in UNITS:
            values = unit_tops.get(unit)
            pending.top_units[unit].append(values[i][chosen].astype(np.float32) if values is not None else None)
        pending.routing.append(json.dumps(records[i], sort_keys=True))
        pending.problems.append(mentions.problem_of(position))
