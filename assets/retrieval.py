"""Trained candidate retrieval assets: `retrieval_index` (the trained matcher's vectors of every KB entity in
FAISS) and `retrieval_candidates` (top-K per mention from it), which evaluation and linking rerank.

The logic lives in `pipeline.training.retrieval`; the zero-shot CLIP index (`entity_index`,
`mention_candidates`) stays: round 1 of training draws its hard negatives from it, and its recall is shown
here next to the trained index's as the baseline.
"""

import dagster as dg

from assets.index import IndexResource, candidates_metadata, index_metadata, recall_metadata, recall_rows
from assets.metadata import markdown_table
from assets.resources import LakeResource, user_errors
from assets.training import TrainingResource
from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.training.retrieval import (RETRIEVAL_VERSION, build_retrieval_index, check_retrieval_index,
                                         find_retrieval_candidates)

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
    with user_errors():
        report = build_retrieval_index(lake.lake(), index.settings(), device=training.settings().torch_device(),
                                       logger=context.log)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.index.fingerprint),
        metadata={
            **index_metadata(report.index),
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
                         training: TrainingResource) -> dg.MaterializeResult:
    store = lake.lake()
    with user_errors():
        report = find_retrieval_candidates(store, index.settings(), device=training.settings().torch_device(),
                                           logger=context.log)
    # The zero-shot index's recall (an input of this asset), shown beside the trained index's as the baseline.
    zero_shot = (store.table_extra(catalog.MENTION_CANDIDATES).get("recall", {})
                 if store.has_table(catalog.MENTION_CANDIDATES) else {})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint),
        metadata={
            **candidates_metadata(report, "trained index recall@K"),
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
        check = check_retrieval_index(store)
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
            "index_path": dg.MetadataValue.path(str(catalog.retrieval_index_dir(store))),
            "entities": check.entities,
            "indexed_entities": check.indexed,
            "excluded_entities": len(check.excluded),
            "missing_entities": len(check.missing),
            "outdated_entities": len(check.outdated),
            "extra_entities": len(check.extra),
        },
    )
