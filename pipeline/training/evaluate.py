"""Evaluate the trained matcher (asset `evaluation`): rerank each mention's FAISS top-K (and optionally score
the full KB), metrics per split, the `predictions` table, zero-shot CLIP baselines and a rank histogram.

Scorings, side by side on the same mentions: `rerank@K` reranks the trained index's top-K (the system's
answer, `retrieval_candidates`), `zero_shot_rerank@K` the zero-shot CLIP index's (`mention_candidates`), and
`full_kb` scores every entity (`full_kb=True`); `retrieval` gives both indexes' recall@n and `timings` the
time per mention of each scoring with the entity encodings ready. Evaluated without trained candidates
(`evaluate_model`'s default), `rerank@K` reranks the zero-shot index's.

Protocol. Every mention of the dev and test splits is ranked; metrics (Hits@1/3/5/10/20, MR, MRR) are over its
non-nil mentions, all of them: a mention whose gold is outside its top K, which has no candidates or unusable
features counts as a miss with rank K + 1 (E + 1 when scoring the full KB of E entities), never dropped; how
many did is reported (`outside_top_k`, `unscored`). Zero-shot baselines rank the full KB exactly and are
capped the same way (ranks beyond K count as K + 1), so every row of the comparison has the same meaning.

`predictions` (`predictions.py`): one row per ranked mention and scoring mode, with its `row_key`.

Incremental evaluation. The table is reused whole when the model, the inputs and the evaluation settings are
unchanged. Otherwise only mentions whose inputs changed are ranked (`plan.py`): a stored row is kept when its
`row_key`, the digest of what its ranking reads (`RowKeys`: the model, the mention's features, gold and top-K
candidates and those candidates' features; for the full KB every entity), is the current one. Rankings are
per mention (topk gate: a mention's scores do not depend on the other mentions of its batch), so the
metrics, computed over all rows, reused and new, equal those of a full recomputation. Full-KB rows are all
ranked again when any entity changed, and with the reference gate (batch-dependent scores) when any
mention of their split changed. The zero-shot baselines are recomputed every time: pooled cosines over the
KB, cheap next to the matcher.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import catalog
from pipeline.hashing import hash_strings
from pipeline.lake import Lake, StoredTable
from pipeline.training.data import Inputs, Mentions
from pipeline.training.encodings import EncodedEntities
from pipeline.training.plan import Block, candidate_sources, encode_needed, plan_blocks, split_positions
from pipeline.training.predictions import (
    EVALUATION_VERSION,
    FULL_KB,
    PREDICTIONS_SCHEMA,
    RowKeys,
    ranking_rows,
    stored_rows,
)
from pipeline.training.retrieval import open_retrieval_index
from pipeline.training.scoring import rank_mentions
from pipeline.training.settings import TrainingSettings
from pipeline.training.summaries import (
    baseline_rows,
    log_rows,
    metrics_row,
    retrieval_rows,
    timing_row,
    write_test_histogram,
)
from pipeline.training.trained import current_model, load_matcher, model_identity

log = logging.getLogger(__name__)


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
    predictions: StoredTable | None = None  # the predictions table as written or kept; None when not written

    def as_dict(self) -> dict:
        """What the predictions table stores in its metadata: everything but the table's own description."""
        values = asdict(dataclasses.replace(self, predictions=None))
        del values["predictions"]
        return values

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


def evaluate_mmoe(lake: Lake, settings: TrainingSettings, *, logger=log) -> EvaluationReport:
    """The `evaluation` stage: the lake's current model on the lake's inputs, `rerank@K` over the trained
    index's candidates (`retrieval_candidates`; the trained index must hold this model's vectors) and
    `zero_shot_rerank@K` over the zero-shot index's, side by side, into the `predictions` table."""
    model = current_model(lake)
    inputs = Inputs.open(lake)
    open_retrieval_index(lake, model)
    return evaluate_model(lake, settings, model, inputs, logger=logger, trained_candidates=True)


def evaluate_model(lake: Lake, settings: TrainingSettings, model: dict, inputs: Inputs | None = None, *,
                   logger=log, out_dir: Path | None = None, write_predictions: bool = True,
                   trained_candidates: bool = False) -> EvaluationReport:
    """Evaluate the model described by `model` (a TrainingReport dict: checkpoint, fingerprint, encoder) on
    `inputs` (default: the lake's).

    `trained_candidates`: `rerank@K` reranks the trained index's candidates (`retrieval_candidates`) and
    `zero_shot_rerank@K` the zero-shot index's, side by side; without, `rerank@K` reranks the zero-shot index's.

    `out_dir` (default `catalog.evaluation_dir`) receives the rank histogram; `write_predictions=False`
    evaluates without replacing the lake's predictions table (ablations). Stored predictions rows whose
    `row_key` is unchanged are kept; only the other mentions are ranked (see the module docstring).
    """
    inputs = inputs or Inputs.open(lake)
    out_dir = Path(out_dir or catalog.evaluation_dir(lake))
    retrieval = inputs.candidates_from(catalog.RETRIEVAL_CANDIDATES) if trained_candidates else None
    retrieval_fingerprint = (lake.table_fingerprint(catalog.RETRIEVAL_CANDIDATES) or "") if trained_candidates else ""
    fingerprint = hash_strings([EVALUATION_VERSION, model["fingerprint"],
                                json.dumps(inputs.fingerprints(), sort_keys=True), str(settings.rerank_k),
                                str(settings.full_kb), retrieval_fingerprint])
    if write_predictions and lake.table_fingerprint(catalog.PREDICTIONS) == fingerprint:
        stored = lake.table_extra(catalog.PREDICTIONS)
        if Path(stored.get("histogram_path", "")).is_file():
            logger.info(f"Model and inputs unchanged (fingerprint {fingerprint[:12]}): reusing the stored predictions.")
            return EvaluationReport(**{**stored, "reused": True}, predictions=lake.stored_table(catalog.PREDICTIONS))

    started = time.perf_counter()
    device = settings.torch_device()
    matcher = load_matcher(model, settings, inputs.entities, device, logger, inputs.training_fingerprints())
    positions = split_positions(inputs.mentions, logger)
    keys = RowKeys(inputs, model_identity(model), settings.rerank_k, matcher.reference_mode,
                   candidate_sources(inputs, settings, retrieval))
    blocks = plan_blocks(positions, keys, stored_rows(lake))
    entities = encode_needed(matcher, inputs, blocks, settings, device, started, logger)
    _rank_blocks(blocks, matcher, inputs, settings, device, entities, keys)
    seconds = time.perf_counter() - started
    ranked, evaluated = _mention_counts(blocks, positions, inputs.mentions)
    logger.info(f"Ranked {ranked} mentions anew; reused the stored predictions of "
                f"{evaluated - ranked} (model, features and candidates unchanged).")

    metrics = [metrics_row(block, inputs) for block in blocks]
    baselines = baseline_rows(inputs, positions, settings.rerank_k)
    log_rows(metrics + baselines, logger)
    histogram = write_test_histogram(out_dir, blocks, inputs, positions["test"], settings.rerank_k)
    report = EvaluationReport(
        fingerprint=fingerprint, reused=False, metrics=metrics, baselines=baselines,
        nil_mentions={split: int(inputs.mentions.is_nil[p].sum()) for split, p in positions.items()},
        checkpoint=model["checkpoint"], predictions_path=str(lake.table_path(catalog.PREDICTIONS)),
        histogram_path=str(histogram), seconds=round(seconds, 3),
        mentions_per_second=round(sum(len(block.to_rank) for block in blocks) / max(seconds, 1e-9), 2),
        entities_encoded=len(entities) if entities is not None else 0,
        extra={"device": str(device), "gate_mode": matcher.config.gate_mode, "rerank_k": settings.rerank_k},
        mentions_ranked=ranked, mentions_reused=evaluated - ranked,
        retrieval=retrieval_rows(keys.sources, positions, settings.rerank_k, trained=retrieval is not None),
        timings=[timing_row(block) for block in blocks])
    if not write_predictions:
        return report
    table = pa.Table.from_pylist([row for block in blocks for row in block.rows()], schema=PREDICTIONS_SCHEMA)
    lake.write_table(catalog.PREDICTIONS, table, fingerprint, extra=report.as_dict())
    return dataclasses.replace(report, predictions=lake.stored_table(catalog.PREDICTIONS))


def _rank_blocks(blocks: list[Block], matcher, inputs: Inputs, settings: TrainingSettings, device,
                 entities: EncodedEntities | None, keys: RowKeys) -> None:
    """Rank each block's mentions that have no reusable row, timing each block."""
    kb_index = inputs.entities.ids.astype(np.int64)
    for block in blocks:
        if len(block.to_rank):
            ranked_at = time.perf_counter()
            ranking = rank_mentions(matcher, block.mentions, inputs.mentions_store, inputs.entities, block.to_rank,
                                    device, settings.rerank_k, full_kb=block.scoring == FULL_KB,
                                    batch_size=settings.eval_batch_size, entities=entities)
            block.seconds = time.perf_counter() - ranked_at
            block.add_ranked(ranking_rows(block.split, block.scoring, ranking, inputs.mentions, kb_index, keys))


def _mention_counts(blocks: list[Block], positions: dict[str, np.ndarray], mentions: Mentions) -> tuple[int, int]:
    """(dev/test mentions ranked anew in some block, dev/test mentions evaluated)."""
    ranked = {mentions.ids[p] for block in blocks for p in block.to_rank.tolist()}
    evaluated = {mentions.ids[p] for chosen in positions.values() for p in chosen.tolist()}
    return len(ranked), len(evaluated)
