"""Evaluate the trained matcher: rerank each mention's FAISS top-K (and optionally score the full KB),
metrics per split, the `predictions` table, zero-shot CLIP baselines and a rank histogram.

Protocol. Every mention of the dev and test splits is ranked; metrics (Hits@1/3/5/10/20, MR, MRR) are over its
non-nil mentions, all of them: a mention whose gold is outside its top K, which has no candidates or unusable
features counts as a miss with rank K + 1 (E + 1 when scoring the full KB of E entities), never dropped; how
many did is reported (`outside_top_k`, `unscored`). Zero-shot baselines rank the full KB exactly and are
capped the same way (ranks beyond K count as K + 1), so every row of the comparison has the same meaning.

`predictions` (one row per ranked mention and scoring mode): the mention, its gold and gold rank, the top-10
KB indices with total and per-unit scores, which experts the mention was routed to (JSON of
`model.routing_records`: per routed sequence, the class vector's experts and per-expert token counts), and the
problem when it could not be scored. The table is reused when the model, the inputs and the evaluation
settings are unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from model import CheckpointConfigMismatch, load_checkpoint, ranking_metrics
from pipeline.errors import MELUserError
from pipeline.hashing import hash_strings
from pipeline.lake import Lake
from pipeline.plots import new_figure, png_bytes, write_png
from pipeline.training.baselines import MODALITIES, zero_shot_ranks
from pipeline.training.data import Inputs, Mentions
from pipeline.training.scoring import EncodedEntities, Ranking, candidate_union, rank_mentions
from pipeline.training.settings import TrainingSettings

EVALUATION_VERSION = "1"
PREDICTIONS_TABLE = "predictions"
EVAL_SPLITS = ("dev", "test")
HISTOGRAM_FILE = "rank_histogram.png"

log = logging.getLogger(__name__)

PREDICTIONS_SCHEMA = pa.schema([
    ("mention_id", pa.string()),
    ("split", pa.string()),
    ("scoring", pa.string()),  # rerank@K | full_kb
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
                   logger=log, out_dir: Path | None = None, write_predictions: bool = True) -> EvaluationReport:
    """Evaluate the model described by `model` (a TrainingReport dict: checkpoint, fingerprint, encoder).

    `out_dir` (default `<lake>/mmoe/evaluation`) receives the rank histogram; `write_predictions=False`
    evaluates without replacing the lake's predictions table (ablations).
    """
    settings.validate()
    inputs = inputs or Inputs.open(lake)
    out_dir = Path(out_dir or lake.root / "mmoe" / "evaluation")
    fingerprint = hash_strings([EVALUATION_VERSION, model["fingerprint"], json.dumps(inputs.fingerprints(), sort_keys=True),
                                str(settings.rerank_k), str(settings.full_kb)])
    if write_predictions and lake.table_fingerprint(PREDICTIONS_TABLE) == fingerprint:
        stored = lake.table_extra(PREDICTIONS_TABLE)
        if Path(stored.get("histogram_path", "")).is_file():
            logger.info(f"Model and inputs unchanged (fingerprint {fingerprint[:12]}): reusing the stored predictions.")
            return EvaluationReport(**{**stored, "reused": True})

    started = time.perf_counter()
    device = settings.torch_device()
    matcher = _load_matcher(model, settings, inputs, device, logger)
    mentions = inputs.mentions
    split_positions = _split_positions(mentions, logger)
    all_positions = np.concatenate(list(split_positions.values()))
    entities = None
    if not matcher.reference_mode:  # encode each needed entity once, for every split and scoring mode
        rows = np.arange(len(inputs.entities)) if settings.full_kb else candidate_union(mentions, all_positions,
                                                                                        settings.rerank_k)
        entities = EncodedEntities.build(matcher, inputs.entities, rows, device)
        logger.info(f"Encoded {len(entities)} entities in {time.perf_counter() - started:.1f} s.")

    rankings: list[tuple[str, Ranking]] = []
    for split, positions in split_positions.items():
        rankings.append((split, rank_mentions(matcher, mentions, inputs.mentions_store, inputs.entities, positions,
                                              device, settings.rerank_k, batch_size=settings.eval_batch_size,
                                              entities=entities)))
        if settings.full_kb:
            rankings.append((split, rank_mentions(matcher, mentions, inputs.mentions_store, inputs.entities,
                                                  positions, device, settings.rerank_k, full_kb=True,
                                                  batch_size=settings.eval_batch_size, entities=entities)))
    seconds = time.perf_counter() - started
    metrics = [_metrics_row(split, ranking, mentions) for split, ranking in rankings]
    baselines = _baseline_rows(inputs, split_positions, settings.rerank_k)
    for row in metrics + baselines:
        method = f"zero-shot CLIP ({row['modality']})" if "modality" in row else f"MMoE {row['scoring']}"
        logger.info(f"{row['split']} {method}: MRR {row['mrr']:.4f}, "
                    f"hits@1 {row['hits@1']:.4f}, hits@10 {row['hits@10']:.4f}, MR {row['mr']:.2f} "
                    f"({row['count']} mentions)")

    test_rerank = next(r for s, r in rankings if s == "test" and r.scoring.startswith("rerank"))
    test = split_positions["test"]
    linkable_test = test[~mentions.is_nil[test]]
    zero_shot = np.minimum(zero_shot_ranks(inputs.entities, inputs.mentions_store, mentions, linkable_test, "both"),
                           settings.rerank_k + 1)
    histogram = write_histogram(out_dir / HISTOGRAM_FILE, test_rerank.ranks_of(linkable_test), zero_shot,
                                settings.rerank_k)
    ranked = sum(len(r.positions) for _, r in rankings)
    report = EvaluationReport(
        fingerprint=fingerprint, reused=False, metrics=metrics, baselines=baselines,
        nil_mentions={split: int(mentions.is_nil[p].sum()) for split, p in split_positions.items()},
        checkpoint=model["checkpoint"], predictions_path=str(lake.table_path(PREDICTIONS_TABLE)),
        histogram_path=str(histogram), seconds=round(seconds, 3),
        mentions_per_second=round(ranked / max(seconds, 1e-9), 2),
        entities_encoded=len(entities) if entities is not None else 0,
        extra={"device": str(device), "gate_mode": matcher.config.gate_mode, "rerank_k": settings.rerank_k})
    if write_predictions:
        table = predictions_table(rankings, mentions, inputs)
        lake.write_table(PREDICTIONS_TABLE, table, fingerprint, extra=report.as_dict())
    return report


def _load_matcher(model: dict, settings: TrainingSettings, inputs: Inputs, device, logger):
    trained_on = model.get("encoder")
    if trained_on and trained_on != inputs.entities.encoder:
        raise MELUserError(f"The trained model at {model['checkpoint']} was trained on features of another encoder "
                           f"({trained_on.get('arch')}, {trained_on.get('weights')}) than the current feature stores "
                           f"({inputs.entities.encoder.get('arch')}, {inputs.entities.encoder.get('weights')}); "
                           "re-materialize mmoe_model.")
    if model.get("inputs") and model["inputs"] != inputs.fingerprints():
        logger.warning("The features, candidates or mentions changed since the model was trained; evaluating the "
                       "trained model on the current ones (re-materialize mmoe_model to retrain).")
    try:
        loaded = load_checkpoint(model["checkpoint"], settings.model_config(inputs.dims), device=device)
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


def _metrics_row(split: str, ranking: Ranking, mentions: Mentions) -> dict:
    linkable = ~mentions.is_nil[ranking.positions]
    ranks = ranking.gold_rank[linkable]
    unscored = sum(1 for problem, scored, keep in zip(ranking.problems, ranking.scored, linkable) if keep and not scored)
    return {"split": split, "scoring": ranking.scoring, **ranking_metrics(ranks),
            "outside_top_k": int((ranks == ranking.miss_rank).sum()) - unscored, "unscored": unscored,
            "miss_rank": ranking.miss_rank}


def _baseline_rows(inputs: Inputs, split_positions: dict[str, np.ndarray], rerank_k: int) -> list[dict]:
    rows = []
    for split, positions in split_positions.items():
        linkable = positions[~inputs.mentions.is_nil[positions]]
        for modality in MODALITIES:
            ranks = zero_shot_ranks(inputs.entities, inputs.mentions_store, inputs.mentions, linkable, modality)
            rows.append({"split": split, "modality": modality, **ranking_metrics(np.minimum(ranks, rerank_k + 1)),
                         "scoring": f"full KB, ranks capped at {rerank_k + 1}"})
    return rows


def predictions_table(rankings: list[tuple[str, Ranking]], mentions: Mentions, inputs: Inputs) -> pa.Table:
    kb_index = inputs.entities.ids.astype(np.int64)
    columns: dict[str, list] = {name: [] for name in PREDICTIONS_SCHEMA.names}
    for split, ranking in rankings:
        for i, position in enumerate(ranking.positions.tolist()):
            nil = bool(mentions.is_nil[position])
            gold = int(mentions.gold_index[position])
            columns["mention_id"].append(str(mentions.ids[position]))
            columns["split"].append(split)
            columns["scoring"].append(ranking.scoring)
            columns["is_nil"].append(nil)
            columns["gold_index"].append(None if gold < 0 else gold)
            columns["gold_rank"].append(None if nil else int(ranking.gold_rank[i]))
            columns["entities_scored"].append(int(ranking.scored[i]))
            columns["top_entities"].append(kb_index[ranking.top_rows[i]].tolist())
            columns["top_scores"].append(ranking.top_scores[i].tolist())
            for unit in ("text", "image", "cross"):
                values = ranking.top_units.get(unit)
                columns[f"top_{unit}_scores"].append(None if values is None or values[i] is None
                                                     else values[i].tolist())
            columns["routing"].append(ranking.routing[i])
            columns["problem"].append(ranking.problems[i])
    return pa.table(columns, schema=PREDICTIONS_SCHEMA)


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

