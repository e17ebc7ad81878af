"""Evaluate the trained matcher: rerank each mention's FAISS top-K (and optionally score the full KB),
metrics per split, the `predictions` table, zero-shot CLIP baselines and a rank histogram.

Scorings, side by side on the same mentions: `rerank@K` reranks the trained index's top-K (the system's
answer, `retrieval_candidates`), `zero_shot_rerank@K` the zero-shot CLIP index's (`mention_candidates`), and
`full_kb` scores every entity (`full_kb=True`); `retrieval` gives both indexes' recall@n and `timings` the
time per mention of each scoring with the entity encodings ready. Called without trained candidates,
`rerank@K` reranks the zero-shot index's.

Protocol. Every mention of the dev and test splits is ranked; metrics (Hits@1/3/5/10/20, MR, MRR) are over its
non-nil mentions, all of them: a mention whose gold is outside its top K, which has no candidates or unusable
features counts as a miss with rank K + 1 (E + 1 when scoring the full KB of E entities), never dropped; how
many did is reported (`outside_top_k`, `unscored`). Zero-shot baselines rank the full KB exactly and are
capped the same way (ranks beyond K count as K + 1), so every row of the comparison has the same meaning.

`predictions` (one row per ranked mention and scoring mode): the mention, its gold and gold rank, the top-10
KB indices with total and per-unit scores, which experts the mention was routed to (JSON of
`model.routing_records`: per routed sequence, the class vector's experts and per-expert token counts), and the
problem when it could not be scored, and the row's `row_key`.

Incremental evaluation. The table is reused whole when the model, the inputs and the evaluation settings are
unchanged. Otherwise only mentions whose inputs changed are ranked: a stored row is kept when its `row_key`,
the digest of what its ranking reads (`RowKeys`: the model, the mention's features, gold and top-K
candidates and those candidates' features; for the full KB every entity), is the current one. Rankings are
per mention (topk gate: a mention's scores do not depend on the other mentions of its batch), so the
metrics, computed over all rows, reused and new, equal those of a full recomputation. Full-KB rows are all
ranked again when any entity changed, and with the reference gate (batch-dependent scores) when any
mention of their split changed. The zero-shot baselines are recomputed every time: pooled cosines over the
KB, cheap next to the matcher.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from model import CheckpointConfigMismatch, load_checkpoint, ranking_metrics
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.hashing import hash_file, hash_strings
from pipeline.lake import Lake
from pipeline.plots import new_figure, png_bytes, write_png
from pipeline.training.baselines import MODALITIES, zero_shot_ranks
from pipeline.training.data import Inputs, Mentions, store_keys
from pipeline.training.scoring import EncodedEntities, Ranking, candidate_union, rank_mentions
from pipeline.training.settings import TrainingSettings

EVALUATION_VERSION = "1"
PREDICTIONS_TABLE = "predictions"
EVAL_SPLITS = ("dev", "test")
FULL_KB = "full_kb"
HISTOGRAM_FILE = "rank_histogram.png"

log = logging.getLogger(__name__)

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


@dataclass
class EvaluationReport:
    fingerprint: str
    reused: bool
    metrics: list[dict]  # one row per (split, scoring)
    baselines: list[dict]  # one row per (split, zero-shot modality)
    nil_mentions: dict  # per split, ranked but outside the metrics
    checkpoint: str
    predictions_path: str
    histogram_path: str
    seconds: float
    mentions_per_second: float
    entities_encoded: int
    extra: dict = field(default_factory=dict)
    mentions_ranked: int = 0  # dev/test mentions ranked anew by this evaluation
    mentions_reused: int = 0  # dev/test mentions whose stored predictions rows were kept (inputs unchanged)
    retrieval: list[dict] = field(default_factory=list)  # recall@1/10/50/100 per split of each index reranked
    timings: list[dict] = field(default_factory=list)  # per (split, scoring): mentions ranked anew, ms per mention

    def as_dict(self) -> dict:
        return asdict(self)

    def histogram_png(self) -> bytes:
        return Path(self.histogram_path).read_bytes()

    def comparison(self, split: str = "test") -> list[dict]:
        """MMoE next to the zero-shot baselines on one split (same conventions)."""
        rows = [{"method": f"MMoE ({row['scoring']})", **_metric_columns(row)}
                for row in self.metrics if row["split"] == split]
        rows += [{"method": f"zero-shot CLIP ({row['modality']})", **_metric_columns(row)}
                 for row in self.baselines if row["split"] == split]
        return rows


def _metric_columns(row: dict) -> dict:
    return {key: row[key] for key in ("hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mr", "mrr", "count")}


def evaluate_model(lake: Lake, settings: TrainingSettings, model: dict, inputs: Inputs | None = None,
                   logger=log, out_dir: Path | None = None, write_predictions: bool = True,
                   retrieval: Mentions | None = None, retrieval_fingerprint: str = "") -> EvaluationReport:
    """Evaluate the model described by `model` (a TrainingReport dict: checkpoint, fingerprint, encoder).

    `retrieval`: the mentions with the trained index's candidates (`retrieval_candidates`). Given, `rerank@K`
    reranks those and `zero_shot_rerank@K` the zero-shot index's (`inputs.mentions`), side by side; without,
    `rerank@K` reranks the zero-shot index's.

    `out_dir` (default `<lake>/mmoe/evaluation`) receives the rank histogram; `write_predictions=False`
    evaluates without replacing the lake's predictions table (ablations). Stored predictions rows whose
    `row_key` is unchanged are kept; only the other mentions are ranked (see the module docstring).
    """
    settings.validate()
    inputs = inputs or Inputs.open(lake)
    out_dir = Path(out_dir or lake.root / "mmoe" / "evaluation")
    fingerprint = hash_strings([EVALUATION_VERSION, model["fingerprint"], json.dumps(inputs.fingerprints(), sort_keys=True),
                                str(settings.rerank_k), str(settings.full_kb), retrieval_fingerprint])
    if write_predictions and lake.table_fingerprint(PREDICTIONS_TABLE) == fingerprint:
        stored = lake.table_extra(PREDICTIONS_TABLE)
        if Path(stored.get("histogram_path", "")).is_file():
            logger.info(f"Model and inputs unchanged (fingerprint {fingerprint[:12]}): reusing the stored predictions.")
            return EvaluationReport(**{**stored, "reused": True})

    started = time.perf_counter()
    device = settings.torch_device()
    matcher = load_matcher(model, settings, inputs.entities, device, logger, inputs.training_fingerprints())
    mentions = inputs.mentions
    split_positions = _split_positions(mentions, logger)
    keys = RowKeys(inputs, model_identity(model), settings.rerank_k, matcher.reference_mode,
                   _candidate_sources(inputs, settings, retrieval))
    blocks = _plan(split_positions, settings, keys, _stored_rows(lake))
    entities = _encode_needed(matcher, inputs, blocks, settings, device, started, logger)
    kb_index = inputs.entities.ids.astype(np.int64)
    for block in blocks:
        if len(block.to_rank):
            ranked_at = time.perf_counter()
            ranking = rank_mentions(matcher, block.mentions, inputs.mentions_store, inputs.entities, block.to_rank,
                                    device, settings.rerank_k, full_kb=block.scoring == FULL_KB,
                                    batch_size=settings.eval_batch_size, entities=entities)
            block.seconds = time.perf_counter() - ranked_at
            block.add_ranked(ranking_rows(block.split, block.scoring, ranking, mentions, kb_index, keys))
    seconds = time.perf_counter() - started
    ranked_ids = {mentions.ids[p] for block in blocks for p in block.to_rank.tolist()}
    evaluated = {mentions.ids[p] for positions in split_positions.values() for p in positions.tolist()}
    logger.info(f"Ranked {len(ranked_ids)} mentions anew; reused the stored predictions of "
                f"{len(evaluated) - len(ranked_ids)} (model, features and candidates unchanged).")

    metrics = [_metrics_row(block, inputs) for block in blocks]
    baselines = _baseline_rows(inputs, split_positions, settings.rerank_k)
    retrieval_rows = _retrieval_rows(keys.sources, split_positions, settings.rerank_k, trained=retrieval is not None)
    for row in metrics + baselines:
        method = f"zero-shot CLIP ({row['modality']})" if "modality" in row else f"MMoE {row['scoring']}"
        logger.info(f"{row['split']} {method}: MRR {row['mrr']:.4f}, "
                    f"hits@1 {row['hits@1']:.4f}, hits@10 {row['hits@10']:.4f}, MR {row['mr']:.2f} "
                    f"({row['count']} mentions)")

    test_rerank = next(b for b in blocks if b.split == "test" and b.scoring.startswith("rerank@"))
    test = split_positions["test"]
    linkable_test = test[~mentions.is_nil[test]]
    zero_shot = np.minimum(zero_shot_ranks(inputs.entities, inputs.mentions_store, mentions, linkable_test, "both"),
                           settings.rerank_k + 1)
    mmoe_ranks = [row["gold_rank"] for row in test_rerank.rows() if not row["is_nil"]]
    histogram = write_histogram(out_dir / HISTOGRAM_FILE, np.asarray(mmoe_ranks), zero_shot, settings.rerank_k)
    ranked_rows = sum(len(block.to_rank) for block in blocks)
    report = EvaluationReport(
        fingerprint=fingerprint, reused=False, metrics=metrics, baselines=baselines,
        nil_mentions={split: int(mentions.is_nil[p].sum()) for split, p in split_positions.items()},
        checkpoint=model["checkpoint"], predictions_path=str(lake.table_path(PREDICTIONS_TABLE)),
        histogram_path=str(histogram), seconds=round(seconds, 3),
        mentions_per_second=round(ranked_rows / max(seconds, 1e-9), 2),
        entities_encoded=len(entities) if entities is not None else 0,
        extra={"device": str(device), "gate_mode": matcher.config.gate_mode, "rerank_k": settings.rerank_k},
        mentions_ranked=len(ranked_ids), mentions_reused=len(evaluated) - len(ranked_ids), retrieval=retrieval_rows,
        timings=[_timing_row(block) for block in blocks])
    if write_predictions:
        table = pa.Table.from_pylist([row for block in blocks for row in block.rows()], schema=PREDICTIONS_SCHEMA)
        lake.write_table(PREDICTIONS_TABLE, table, fingerprint, extra=report.as_dict())
    return report


# -- incremental evaluation -----------------------------------------------------------------------------


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


@dataclass
class _Block:
    """The predictions rows of one (split, scoring mode): reused stored rows and rows ranked anew."""

    split: str
    scoring: str
    mentions: Mentions  # with the candidate lists this scoring reranks
    positions: np.ndarray  # every mention of the split, in table order
    stored: list[dict | None]  # the reusable stored row per position (None: rank it)
    ranked: dict = field(default_factory=dict)  # position -> new row
    seconds: float = 0.0  # ranking the new rows, entity encodings ready

    @cached_property
    def to_rank(self) -> np.ndarray:
        return np.asarray([p for p, row in zip(self.positions.tolist(), self.stored) if row is None], np.int64)

    def add_ranked(self, rows: dict[int, dict]) -> None:
        self.ranked.update(rows)

    def rows(self) -> list[dict]:
        return [row if row is not None else self.ranked[p] for p, row in zip(self.positions.tolist(), self.stored)]

    def miss_rank(self, inputs: Inputs) -> int:
        return len(inputs.entities) + 1 if self.scoring == FULL_KB else int(self.scoring.split("@")[1]) + 1


ZERO_SHOT = "zero_shot_"  # prefix of the scoring that reranks the zero-shot index's candidates


def _candidate_sources(inputs: Inputs, settings: TrainingSettings, retrieval: Mentions | None) -> dict[str, Mentions]:
    """Scoring mode -> the mentions whose candidate lists it reranks (full KB: any, it reads none)."""
    k = settings.rerank_k
    sources = {f"rerank@{k}": retrieval if retrieval is not None else inputs.mentions}
    if retrieval is not None:
        sources[f"{ZERO_SHOT}rerank@{k}"] = inputs.mentions
    if settings.full_kb:
        sources[FULL_KB] = inputs.mentions
    return sources


def model_identity(model: dict) -> str:
    """The trained run's fingerprint and the digest of its weights: a run retrained under the same fingerprint
    (its folder deleted, or on CUDA, where runs are close but not bit-identical) invalidates the rows."""
    weights = Path(model["checkpoint"]) / "model.safetensors"
    return hash_strings([model["fingerprint"], hash_file(weights) if weights.is_file() else ""])


def _plan(split_positions: dict[str, np.ndarray], settings: TrainingSettings, keys: RowKeys,
          stored: dict[tuple[str, str], dict]) -> list[_Block]:
    """One block per (split, scoring mode); a stored row is reused when its row_key is the current one."""
    mentions = keys.inputs.mentions
    blocks = []
    for split, positions in split_positions.items():
        for scoring, source in keys.sources.items():
            row_keys = [keys.key(p, scoring) for p in positions.tolist()]
            reusable = []
            for p, key in zip(positions.tolist(), row_keys):
                row = stored.get((str(mentions.ids[p]), scoring))
                reusable.append(row if row is not None and row.get("row_key") == key and row["split"] == split
                                else None)
            blocks.append(_Block(split, scoring, source, positions, reusable))
    return blocks


def _stored_rows(lake: Lake) -> dict[tuple[str, str], dict]:
    """The stored predictions rows by (mention id, scoring); none from a table written before row keys."""
    if not lake.has_table(PREDICTIONS_TABLE):
        return {}
    table = lake.read_table(PREDICTIONS_TABLE)
    if table.schema.remove_metadata() != PREDICTIONS_SCHEMA:
        return {}
    return {(row["mention_id"], row["scoring"]): row for row in table.to_pylist()}


def _encode_needed(matcher, inputs: Inputs, blocks: list[_Block], settings: TrainingSettings, device, started,
                   logger) -> EncodedEntities | None:
    """Encode each entity the mentions to rank need, once, for every split and scoring mode (topk mode)."""
    if matcher.reference_mode:
        return None
    if any(block.scoring == FULL_KB and len(block.to_rank) for block in blocks):
        rows = np.arange(len(inputs.entities))
    else:
        unions = [candidate_union(block.mentions, block.to_rank, settings.rerank_k) for block in blocks]
        rows = np.unique(np.concatenate(unions)) if unions else np.zeros(0, np.int64)
    if len(rows) == 0:
        return None
    entities = EncodedEntities.build(matcher, inputs.entities, rows, device)
    logger.info(f"Encoded {len(entities)} entities in {time.perf_counter() - started:.1f} s.")
    return entities


def load_matcher(model: dict, settings: TrainingSettings | None, entities: FeatureStore, device, logger=log,
                 inputs_fingerprints: dict | None = None):
    """The trained matcher of `model` (a TrainingReport dict) in eval mode, refused with one sentence when it
    was trained on features of another encoder than the entity store's or its checkpoint is missing.

    With `settings` the checkpoint must have the configuration they describe; without, it is loaded with its
    own (linking uses the model as it was trained, whatever the TrainingResource says now)."""
    trained_on = model.get("encoder")
    if trained_on and trained_on != entities.encoder:
        raise MELUserError(f"The trained model at {model['checkpoint']} was trained on features of another encoder "
                           f"({trained_on.get('arch')}, {trained_on.get('weights')}) than the current feature stores "
                           f"({entities.encoder.get('arch')}, {entities.encoder.get('weights')}); "
                           "re-materialize mmoe_model.")
    if inputs_fingerprints is not None and model.get("inputs") and model["inputs"] != inputs_fingerprints:
        logger.warning("The train/dev mentions, their features or candidates changed since the model was trained; "
                       "evaluating the trained model on the current ones (re-materialize mmoe_model to retrain).")
    try:
        expected = settings.model_config(entities.dims) if settings is not None else None
        loaded = load_checkpoint(model["checkpoint"], expected, device=device)
    except CheckpointConfigMismatch as error:
        raise MELUserError(f"{error}; the TrainingResource settings or the features changed since it was trained: "
                           "re-materialize mmoe_model.") from None
    except FileNotFoundError:
        raise MELUserError(f"The trained model's checkpoint {model['checkpoint']} is missing; "
                           "re-materialize mmoe_model.") from None
    return loaded.model.eval()


def _split_positions(mentions: Mentions, logger) -> dict[str, np.ndarray]:
    positions = {}
    for split in EVAL_SPLITS:
        chosen = mentions.select(split, linkable_only=False)
        if (~mentions.is_nil[chosen]).sum() == 0:
            if split == "test":
                raise MELUserError(f"The test split has no linkable (non-nil) mention to evaluate "
                                   f"({len(chosen)} mentions, all nil or none); add test mentions to the dataset.")
            logger.warning(f"The {split} split has no linkable mention: it is not evaluated.")
            continue
        positions[split] = chosen
    return positions


def _metrics_row(block: _Block, inputs: Inputs) -> dict:
    split, scoring, rows, miss_rank = block.split, block.scoring, block.rows(), block.miss_rank(inputs)
    linkable = [row for row in rows if not row["is_nil"]]
    ranks = np.asarray([row["gold_rank"] for row in linkable], dtype=np.int64)
    unscored = sum(1 for row in linkable if row["entities_scored"] == 0)
    return {"split": split, "scoring": scoring, **ranking_metrics(ranks),
            "outside_top_k": int((ranks == miss_rank).sum()) - unscored, "unscored": unscored,
            "miss_rank": miss_rank}


def _timing_row(block: _Block) -> dict:
    """What ranking this block's new rows cost, entity encodings ready (none ranked: nothing measured)."""
    ranked = len(block.to_rank)
    return {"split": block.split, "scoring": block.scoring, "ranked": ranked, "seconds": round(block.seconds, 3),
            "ms_per_mention": round(1000 * block.seconds / ranked, 3) if ranked else None}


RECALL_AT = (1, 10, 50, 100)


def _retrieval_rows(sources: dict[str, Mentions], split_positions: dict[str, np.ndarray], k: int,
                    trained: bool) -> list[dict]:
    """Recall@n (n in 1, 10, 50, 100 up to K, and K) of the gold among each reranked candidate list, per split,
    over every non-nil mention (`trained`: `rerank@K` reranks the trained index's candidates)."""
    cutoffs = sorted({n for n in RECALL_AT if n <= k} | {k})
    rows = []
    for scoring, mentions in sources.items():
        if scoring == FULL_KB:
            continue
        index = "trained" if trained and not scoring.startswith(ZERO_SHOT) else "zero-shot CLIP"
        for split, positions in split_positions.items():
            linkable = positions[~mentions.is_nil[positions]]
            rows.append({"index": index, "scoring": scoring, "split": split, "mentions": len(linkable),
                         **{f"recall@{n}": value for n, value in mentions.recall(linkable, cutoffs).items()}})
    return rows


def _baseline_rows(inputs: Inputs, split_positions: dict[str, np.ndarray], rerank_k: int) -> list[dict]:
    rows = []
    for split, positions in split_positions.items():
        linkable = positions[~inputs.mentions.is_nil[positions]]
        for modality in MODALITIES:
            ranks = zero_shot_ranks(inputs.entities, inputs.mentions_store, inputs.mentions, linkable, modality)
            rows.append({"split": split, "modality": modality, **ranking_metrics(np.minimum(ranks, rerank_k + 1)),
                         "scoring": f"full KB, ranks capped at {rerank_k + 1}"})
    return rows


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
        for unit in ("text", "image", "cross"):
            values = ranking.top_units.get(unit)
            row[f"top_{unit}_scores"] = None if values is None or values[i] is None else values[i].tolist()
        row.update(routing=ranking.routing[i], problem=ranking.problems[i],
                   row_key=keys.key(position, scoring))
        rows[position] = row
    return rows


def missing_test_predictions(lake: Lake) -> tuple[int, list[str]]:
    """(non-nil test mentions of the `mentions` table, those without a rerank row in `predictions`): every
    linkable test mention belongs in the test metrics' denominator, so none may lack a row."""
    mentions = lake.read_table("mentions", columns=["mention_id", "split", "is_nil"]).to_pydict()
    expected = [mention_id for mention_id, split, nil in zip(mentions["mention_id"], mentions["split"],
                                                             mentions["is_nil"]) if split == "test" and not nil]
    covered: set[str] = set()
    if lake.has_table(PREDICTIONS_TABLE):
        rows = lake.read_table(PREDICTIONS_TABLE, columns=["mention_id", "split", "scoring"]).to_pydict()
        covered = {mention_id for mention_id, split, scoring in zip(rows["mention_id"], rows["split"], rows["scoring"])
                   if split == "test" and scoring.startswith("rerank")}
    return len(expected), [mention_id for mention_id in expected if mention_id not in covered]


# -- the rank histogram ---------------------------------------------------------------------------------


def rank_bins(k: int) -> list[tuple[str, int, int]]:
    edges = [(1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, k)]
    bins = [(str(low) if low == high else f"{low}-{high}", low, high) for low, high in edges if low <= k]
    return [(label, low, min(high, k)) for label, low, high in bins] + [(f"> {k} (miss)", k + 1, k + 1)]


def write_histogram(path: Path, mmoe_ranks: np.ndarray, zero_shot_ranks_: np.ndarray, k: int) -> Path:
    """Bar chart of gold-rank bins (share of mentions): MMoE reranking next to zero-shot CLIP."""
    bins = rank_bins(k)
    labels = [label for label, _, _ in bins]
    x = np.arange(len(bins))

    def shares(ranks):
        ranks = np.asarray(ranks)
        return [float(((ranks >= low) & (ranks <= high)).mean()) if len(ranks) else 0.0 for _, low, high in bins]

    figure, axes = new_figure()
    axes.bar(x - 0.2, shares(mmoe_ranks), width=0.4, label="MMoE rerank")
    axes.bar(x + 0.2, shares(zero_shot_ranks_), width=0.4, label="zero-shot CLIP (text+image)")
    axes.set_xticks(x, labels, rotation=30)
    axes.set_xlabel("rank of the gold entity (test split)")
    axes.set_ylabel("share of mentions")
    axes.legend(frameon=False)
    return write_png(path, png_bytes(figure))

