"""MMoE assets: `mmoe_model` trains the matcher on the cached features, `evaluation` ranks the dev and test
mentions with it and compares against zero-shot CLIP.

The logic lives in `pipeline.training`; these assets map `TrainingResource` onto its settings and its
reports onto metadata: per-epoch and per-split tables as markdown, the figures that matter as numbers (so the
UI plots them across materializations), the rank histogram as an embedded PNG.
"""

import json

import dagster as dg

from assets.metadata import markdown_table, table_metadata
from assets.resources import LakeResource, settings_resource, user_errors
from pipeline import catalog
from pipeline.plots import png_markdown
from pipeline.training.evaluate import evaluate_mmoe
from pipeline.training.predictions import EVALUATION_VERSION, missing_test_predictions
from pipeline.training.settings import TrainingSettings
from pipeline.training.train import TRAINING_VERSION, train_mmoe

GROUP = "model"
EPOCH_COLUMNS = ["epoch", "loss", "loss_total", "loss_text", "loss_image", "loss_cross", "loss_retrieval", "dev_mrr",
                 "dev_hits@1", "dev_hits@10", "seconds", "samples_per_second"]
ROUND_COLUMNS = ["round", "epochs", "best_epoch", "dev_mrr", "dev_hits@1", "dev_recall", "train_recall", "k",
                 "dev_mrr_round_candidates", "mining_seconds"]
METRIC_COLUMNS = ["split", "scoring", "hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mr", "mrr", "count",
                  "outside_top_k", "unscored"]


class TrainingResource(settings_resource(TrainingSettings, exclude=("progress",))):
    """How the MMoE matcher is trained and evaluated (defaults: the paper's WikiMEL recipe, head-only lr)."""


@dg.asset(
    deps=["entity_features", "mention_features", "mention_candidates", "mentions"],
    group_name=GROUP,
    code_version=TRAINING_VERSION,
    kinds={"pytorch", "safetensors"},
    pool="gpu",
    description="The MMoE matcher trained on the cached CLIP features (in-batch + FAISS hard negatives, early "
    "stopping on dev MRR); the best epoch's safetensors checkpoint. Reused when the train/dev mentions, "
    "their features and candidates and the settings are unchanged (new test mentions do not retrain), "
    "resumed after a crash.",
)
def mmoe_model(context: dg.AssetExecutionContext, lake: LakeResource,
               training: TrainingResource) -> dg.MaterializeResult:
    with user_errors():
        settings = training.settings()
        report = train_mmoe(lake.lake(), settings, logger=context.log)
    best = report.best_dev
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint),
        metadata={
            "epochs": dg.MetadataValue.md(markdown_table([_rounded(row) for row in report.history], EPOCH_COLUMNS)),
            "best_epoch": report.best_epoch,
            "epochs_run": len(report.history),
            "stopped_early": report.stopped_early,
            "rounds": dg.MetadataValue.md(markdown_table([_rounded(row) for row in report.rounds], ROUND_COLUMNS)),
            "best_round": report.round,
            "rounds_run": len(report.rounds),
            "dev_mrr_trained_index": float(report.rounds[report.round - 1]["dev_mrr"]),
            "dev_recall_trained_index": float(report.rounds[report.round - 1]["dev_recall"]),
            "dev_mrr": float(best["mrr"]),
            "dev_hits@1": float(best["hits@1"]),
            "dev_hits@10": float(best["hits@10"]),
            "samples_per_second": float(report.samples_per_second),
            "parameters": report.parameters,
            "train_mentions": report.train_mentions,
            "left_out": dg.MetadataValue.json(report.left_out),
            "device": report.device,
            "learning_rate": float(settings.learning_rate),
            "config": dg.MetadataValue.json(report.config),
            "checkpoint": dg.MetadataValue.path(report.checkpoint),
            "reused_stored_model": report.reused,
            "resumed_from_epoch": report.resumed_from_epoch,
            "fingerprint": report.fingerprint,
        },
    )


@dg.asset(
    deps=["mmoe_model", "retrieval_candidates", "mention_candidates", "entity_features", "mention_features",
          "mentions"],
    group_name=GROUP,
    code_version=EVALUATION_VERSION,
    kinds={"pytorch", "parquet"},
    pool="gpu",
    description="Dev and test mentions ranked by the trained matcher (FAISS top-K reranked; optionally the full "
    "KB): Hits@1/3/5/10/20, MR, MRR per split next to zero-shot CLIP, a rank histogram, and the `predictions` "
    "table (top-10 entities with per-unit scores and expert routing per mention). Only mentions whose model, "
    "features or candidates changed are ranked again; the others keep their stored rows.",
)
def evaluation(context: dg.AssetExecutionContext, lake: LakeResource,
               training: TrainingResource) -> dg.MaterializeResult:
    with user_errors():
        report = evaluate_mmoe(lake.lake(), training.settings(), logger=context.log)
    comparison = report.comparison("test")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint),
        metadata={
            **table_metadata(report.predictions,
                             ["mention_id", "split", "scoring", "gold_index", "gold_rank", "top_entities", "problem"]),
            **{f"{row['split']}/{row['scoring']}/{name}": float(row[name]) for row in report.metrics
               for name in ("hits@1", "hits@10", "mrr", "mr")},
            **{f"{row['split']}/zero_shot_{row['modality']}/{name}": float(row[name]) for row in report.baselines
               for name in ("hits@1", "mrr")},
            "metrics": dg.MetadataValue.md(markdown_table([_rounded(row) for row in report.metrics], METRIC_COLUMNS)),
            "retrieval": dg.MetadataValue.md(markdown_table([_rounded(row) for row in report.retrieval])),
            "ranking_time": dg.MetadataValue.md(markdown_table(report.timings)),
            **{f"{row['split']}/{row['index'].split()[0]}_index/{name}": float(value) for row in report.retrieval
               for name, value in row.items() if name.startswith("recall@")},
            "comparison_test": dg.MetadataValue.md(markdown_table([_rounded(row) for row in comparison])),
            "rank_histogram": dg.MetadataValue.md(png_markdown(report.histogram_png(), "rank histogram")),
            "nil_mentions": dg.MetadataValue.json(report.nil_mentions),
            "entities_encoded": report.entities_encoded,
            "mentions_ranked": report.mentions_ranked,
            "mentions_reused": report.mentions_reused,
            "seconds": float(report.seconds),
            "mentions_per_second": float(report.mentions_per_second),
            "checkpoint": dg.MetadataValue.path(report.checkpoint),
            "reused_stored_output": report.reused,
            "fingerprint": report.fingerprint,
        },
    )


@dg.asset_check(asset=evaluation, description="MMoE (reranking) beats zero-shot CLIP (text+image) on test MRR.")
def mmoe_beats_zero_shot(lake: LakeResource) -> dg.AssetCheckResult:
    stored = lake.lake().table_extra(catalog.PREDICTIONS)
    mmoe = next(row["mrr"] for row in stored["metrics"] if row["split"] == "test" and row["scoring"].startswith("rerank"))
    zero_shot = next(row["mrr"] for row in stored["baselines"] if row["split"] == "test" and row["modality"] == "both")
    return dg.AssetCheckResult(
        passed=mmoe > zero_shot, severity=dg.AssetCheckSeverity.WARN,
        metadata={"mmoe_test_mrr": float(mmoe), "zero_shot_test_mrr": float(zero_shot)},
        description=f"test MRR: MMoE {mmoe:.4f} vs zero-shot CLIP {zero_shot:.4f}.",
    )


@dg.asset_check(asset=evaluation, description="The predictions table holds a rerank row for every non-nil test "
                "mention of the mentions table, so the test metrics count every one of them.")
def evaluation_covers_every_test_mention(lake: LakeResource) -> dg.AssetCheckResult:
    with user_errors():
        expected, missing = missing_test_predictions(lake.lake())
    return dg.AssetCheckResult(
        passed=not missing, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"test_mentions": expected, "with_rerank_row": expected - len(missing),
                  "missing": len(missing), "missing_examples": json.dumps(missing[:5])},
        description=f"{expected - len(missing)} of {expected} non-nil test mentions have a rerank row in "
                    f"{catalog.PREDICTIONS}" + (f"; missing e.g. {', '.join(missing[:5])}." if missing else "."),
    )


def _rounded(row: dict) -> dict:
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}
