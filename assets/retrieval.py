"""Trained candidate retrieval assets: `retrieval_index` (the trained matcher's vectors of every KB entity in
FAISS) and `retrieval_candidates` (top-K per mention from it), which evaluation and linking rerank.

The logic lives in `pipeline.training.retrieval`; the zero-shot CLIP index (`entity_index`,
`mention_candidates`) stays: round 1 of training draws its hard negatives from it, and its recall is shown
here next to the trained index's as the baseline.
"""

import dagster as dg

from assets.features import ClipResource
from assets.index import IndexResource, candidates_metadata, index_metadata, recall_metadata, recall_rows
from assets.metadata import markdown_table
from assets.resources import LakeResource, user_errors
from assets.training import TrainingResource
from pipeline.errors import MELUserError
from pipeline.features import FeatureStore, mention_store_name, store_dir
from pipeline.index.candidates import TABLE as ZERO_SHOT_TABLE
from pipeline.training.retrieval import (
    RETRIEVAL_TABLE, RETRIEVAL_VERSION, build_retrieval_index, check_retrieval_index, find_retrieval_candidates,
    retrieval_index_dir,
)
from pipeline.training.train import current_model

GROUP = "index"


@dg.asset(
    deps=["mmoe_model", "entity_features"],
    group_name=GROUP,
    kinds={"faiss", "pytorch"},
    code_version=RETRIEVAL_VERSION,
    pool="gpu",
    description="FAISS index of the trained matcher's retrieval vectors of the KB (the separable part of its "
    "score; ids = KB indices, exact below a size threshold, IVF above): rebuilt for a new model, synced in place "
    "when entities change (only those are encoded, no retraining). Entities whose vector is NaN/Inf are left out "
    "and listed.",
)
def retrieval_index(context: dg.AssetExecutionContext, lake: LakeResource, index: IndexResource,
                    training: TrainingResource) -> dg.MaterializeResult:
    store = lake.lake()
    with user_errors():
        settings = index.settings()
        gpu = settings.gpu()
        report = build_retrieval_index(store, current_model(store), settings, training.settings().torch_device(),
                                       logger=context.log)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.index.fingerprint),
        metadata={
            **index_metadata(report.index, gpu),
            "index_dim": report.index.dim,
            "entities_encoded": report.encoded,
            "model": report.model[:12],
            "device": report.device,
        },
    )


@dg.asset(
    deps=["retrieval_index", "mention_features", "mentions", "mention_candidates"],
    group_name=GROUP,
    kinds={"faiss", "parquet"},
    code_version=RETRIEVAL_VERSION,
    pool="gpu",
    description="Top-K KB indices and scores per mention (every split) from the trained retrieval index, with "
    "the gold rank and recall@K per split next to the zero-shot CLIP index's (mention_candidates).",
)
def retrieval_candidates(context: dg.AssetExecutionContext, lake: LakeResource, index: IndexResource,
                         training: TrainingResource, clip: ClipResource) -> dg.MaterializeResult:
    store = lake.lake()
    with user_errors():
        mentions = FeatureStore.open(store_dir(store, mention_store_name(clip.description_source)))
        report = find_retrieval_candidates(store, current_model(store), mentions, index.settings(), index.top_k,
                                           training.settings().torch_device(), logger=context.log)
    zero_shot = store.table_extra(ZERO_SHOT_TABLE).get("recall", {}) if store.has_table(ZERO_SHOT_TABLE) else {}
    table = store.read_table(RETRIEVAL_TABLE)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint),
        metadata={
            **candidates_metadata(report, table, store.table_path(RETRIEVAL_TABLE), "trained index recall@K"),
            **{f"zero_shot_{name}": value for name, value in recall_metadata(zero_shot).items()},
            "recall": dg.MetadataValue.md(markdown_table(
                [{"index": "trained", **row} for row in recall_rows(report.stats["recall"])]
                + [{"index": "zero-shot CLIP", **row} for row in recall_rows(zero_shot)])),
        },
    )


@dg.asset_check(
    asset=retrieval_index,
    additional_deps=["entity_features", "mmoe_model"],
    blocking=True,
    description="The trained index holds the current model's vectors of every usable entity of the store, each "
    "for the features the store holds now (content keys; entities with NaN/Inf vectors are listed, not indexed).",
)
def retrieval_index_matches_model(lake: LakeResource) -> dg.AssetCheckResult:
    store = lake.lake()
    try:
        check = check_retrieval_index(store, current_model(store))
    except MELUserError as error:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(error))
    problems = check.problems
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"{check.indexed} of {check.entities} entities indexed with model {check.current_model[:12]}'s "
                     f"vectors ({len(check.excluded)} left out as unusable)." if not problems
                     else "The trained index does not match: " + "; ".join(problems) + "."),
        metadata={
            "index_path": dg.MetadataValue.path(str(retrieval_index_dir(store))),
            "entities": check.entities,
            "indexed_entities": check.indexed,
            "excluded_entities": len(check.excluded),
            "missing_entities": len(check.missing),
            "outdated_entities": len(check.outdated),
            "extra_entities": len(check.extra),
        },
    )
