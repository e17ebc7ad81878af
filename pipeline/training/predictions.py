"""The `predictions` table: its schema, the rows of a ranking, and the `row_key` that says when a stored row
still holds (see `evaluate.py` for incremental evaluation).

One row per ranked mention and scoring mode: the mention, its gold and gold rank, the top-10 KB indices with
total and per-unit scores, which experts the mention was routed to (JSON of `model.routing_records`: per
routed sequence, the class vector's experts and per-expert token counts), the problem when it could not be
scored, and the row's `row_key`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from model import UNITS
from pipeline import catalog
from pipeline.hashing import hash_strings
from pipeline.lake import Lake
from pipeline.training.data import Inputs, Mentions, store_keys
from pipeline.training.scoring import Ranking

EVALUATION_VERSION = "1"
FULL_KB = "full_kb"
ZERO_SHOT = "zero_shot_"  # prefix of the scoring that reranks the zero-shot index's candidates

PREDICTIONS_SCHEMA = pa.schema([
    ("mention_id", pa.string()),
    ("split", pa.string()),
    ("scoring", pa.string()),  # rerank@K (trained index when there is one) | zero_shot_rerank@K | full_kb
    ("is_nil", pa.bool_()),
    ("gold_index", pa.int64()),  # KB index; null for nil
    ("gold_rank", pa.int32()),  # 1-based; K + 1 (E + 1) = miss; null for nil
    ("entities_scored", pa.int32()),
    ("top_entities", pa.list_(pa.int64())),  # KB indices, best first
    ("top_scores", pa.list_(pa.float32())),  # total score (mean of the unit scores)
    ("top_text_scores", pa.list_(pa.float32())),  # null when the unit is disabled
    ("top_image_scores", pa.list_(pa.float32())),
    ("top_cross_scores", pa.list_(pa.float32())),
    ("routing", pa.string()),  # JSON: {sequence: {class_experts: [...], token_counts: [...]}}
    ("problem", pa.string()),  # why the mention could not be (fully) ranked; null when nothing
    ("row_key", pa.string()),  # digest of what the row was ranked from (RowKeys): reused while unchanged
])


class RowKeys:
    """The `row_key` of a predictions row: a digest of everything its ranking reads.

    Reranking reads the model, the mention's features (content key), its gold, its top-K candidates and
    their features (content keys); scoring the full KB reads every entity (the entity store's
    fingerprint) and, with the reference gate, whose scores depend on the batch, the split's other mentions.
    """

    def __init__(self, inputs: Inputs, model_fingerprint: str, rerank_k: int, reference: bool,
                 sources: dict[str, Mentions]):
        self.inputs, self.model, self.k, self.reference = inputs, model_fingerprint, rerank_k, reference
        self.sources = sources  # scoring -> the mentions whose candidate lists it reranks
        m = inputs.mentions
        self.mention_key = store_keys(inputs.mentions_store, m.mention_row)
        self.gold_key = store_keys(inputs.entities, m.gold_row)
        self.kb_index = inputs.entities.ids
        self._entity_keys: list[str] | None = None
        self._split_digest: dict[str, str] = {}

    def key(self, position: int, scoring: str) -> str:
        m = self.inputs.mentions
        candidates = self.sources[scoring]
        parts = [EVALUATION_VERSION, self.model, scoring, m.ids[position], m.split[position],
                 str(m.gold_index[position]), str(bool(m.is_nil[position])), self.mention_key[position],
                 self.gold_key[position], candidates.candidate_problem[position] or ""]
        if scoring == FULL_KB:
            parts += [self.inputs.entities.fingerprint, self._split(m.split[position]) if self.reference else ""]
        else:
            rows = candidates.candidates[position][:self.k]
            parts += [f"{self.kb_index[row]}:{self._entity_key(row)}" for row in rows.tolist()]
        return hash_strings(parts)

    def _entity_key(self, row: int) -> str:
        if self._entity_keys is None:
            self._entity_keys = self.inputs.entities.content_keys.to_pylist()
        return self._entity_keys[row]

    def _split(self, split: str) -> str:
        if split not in self._split_digest:
            m = self.inputs.mentions
            positions = m.select(split, linkable_only=False).tolist()
            self._split_digest[split] = hash_strings(f"{m.ids[p]}:{self.mention_key[p]}" for p in positions)
        return self._split_digest[split]


def ranking_rows(split: str, scoring: str, ranking: Ranking, mentions: Mentions, kb_index: np.ndarray,
                 keys: RowKeys) -> dict[int, dict]:
    """The predictions rows of a ranking, by position in Mentions."""
    rows = {}
    for i, position in enumerate(ranking.positions.tolist()):
        nil = bool(mentions.is_nil[position])
        gold = int(mentions.gold_index[position])
        row = {"mention_id": str(mentions.ids[position]), "split": split, "scoring": scoring, "is_nil": nil,
               "gold_index": None if gold < 0 else gold, "gold_rank": None if nil else int(ranking.gold_rank[i]),
               "entities_scored": int(ranking.scored[i]), "top_entities": kb_index[ranking.top_rows[i]].tolist(),
               "top_scores": ranking.top_scores[i].tolist()}
        for unit in UNITS:
            values = ranking.top_units.get(unit)
            row[f"top_{unit}_scores"] = None if values is None or values[i] is None else values[i].tolist()
        row.update(routing=ranking.routing[i], problem=ranking.problems[i],
                   row_key=keys.key(position, scoring))
        rows[position] = row
    return rows


def stored_rows(lake: Lake) -> dict[tuple[str, str], dict]:
    """The stored predictions rows by (mention id, scoring); none from a table written before row keys."""
    if not lake.has_table(catalog.PREDICTIONS):
        return {}
    table = lake.read_table(catalog.PREDICTIONS)
    if table.schema.remove_metadata() != PREDICTIONS_SCHEMA:
        return {}
    return {(row["mention_id"], row["scoring"]): row for row in table.to_pylist()}


def missing_test_predictions(lake: Lake) -> tuple[int, list[str]]:
    """(non-nil test mentions of the `mentions` table, those without a rerank row in `predictions`): every
    linkable test mention belongs in the test metrics' denominator, so none may lack a row."""
    mentions = lake.read_table(catalog.MENTIONS, columns=["mention_id", "split", "is_nil"]).to_pydict()
    expected = [mention_id for mention_id, split, nil in zip(mentions["mention_id"], mentions["split"],
                                                             mentions["is_nil"]) if split == "test" and not nil]
    covered: set[str] = set()
    if lake.has_table(catalog.PREDICTIONS):
        rows = lake.read_table(catalog.PREDICTIONS, columns=["mention_id", "split", "scoring"]).to_pydict()
        covered = {mention_id for mention_id, split, scoring in zip(rows["mention_id"], rows["split"], rows["scoring"])
                   if split == "test" and scoring.startswith("rerank")}
    return len(expected), [mention_id for mention_id in expected if mention_id not in covered]
