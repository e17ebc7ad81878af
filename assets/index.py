"""Candidate retrieval assets: the FAISS entity index and the top-K candidates per mention.

The logic lives in `pipeline.index`; each asset calls its stage and turns the report into metadata (numbers as
numbers, so the UI plots recall, throughput and sync counts across materializations).
"""

import dagster as dg

from assets.metadata import markdown_table, table_metadata
from assets.resources import LakeResource, settings_resource, user_errors
from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features import FeatureStore
from pipeline.index import (
    COMBINATION_RULE,
    CandidatesReport,
    EntityIndex,
    IndexReport,
    IndexSettings,
    ItemVectors,
    build_entity_index,
    find_mention_candidates,
)
from pipeline.index.candidates import CANDIDATES_VERSION
from pipeline.index.checks import check_index_against_features, recall_floor
from pipeline.index.faiss_index import INDEX_FORMAT
from pipeline.index.vectors import COMBINATION_VERSION
from pipeline.plots import png_markdown, recall_curve_png

GROUP = "index"


class IndexResource(settings_resource(IndexSettings)):
    """How the entity index is built and searched, and how many candidates each mention keeps."""


@dg.asset(
    deps=["entity_features"],
    group_name=GROUP,
    kinds={"faiss"},
    code_version=f"{INDEX_FORMAT}/{COMBINATION_VERSION}",
    description="FAISS inner-product index over the combined text+image vectors of the KB (ids = KB indices): "
    "exact below a size threshold, IVF above; kept in sync with the entity features by removing and adding "
    "only the entities whose vectors changed.",
)
def entity_index(context: dg.AssetExecutionContext, lake: LakeResource, index: IndexResource) -> dg.MaterializeResult:
    with user_errors():
        report = build_entity_index(lake.lake(), index.settings(), logger=context.log)
    excluded = [p for p in report.problems if p["action"] == "excluded"]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint),
        metadata={
            **index_metadata(report),
            "dim": report.dim,
            "index_dim": 2 * report.dim,
            "text_only_entities": len(report.problems) - len(excluded),
            "encoder": dg.MetadataValue.json(report.encoder),
            "combination_rule": COMBINATION_RULE,
        },
    )


def index_metadata(report: IndexReport) -> dict:
    """What every index asset shows: size, kind, what the update did and why, the entities left out."""
    return {
        "dagster/row_count": report.entities,
        "index_kind": report.kind,
        "entities": report.entities,
        "nlist": report.nlist or 0,
        "action": report.action,
        "reason": report.reason,
        "added": report.counts.added,
        "removed": report.counts.removed,
        "updated": report.counts.updated,
        "unchanged": report.counts.unchanged,
        "excluded_entities": sum(1 for p in report.problems if p["action"] == "excluded"),
        "problems": dg.MetadataValue.md(markdown_table(report.problems[:20])),
        "seconds": report.seconds,
        "gpu": report.gpu,
        "fingerprint": report.fingerprint,
        "path": dg.MetadataValue.path(report.directory),
    }


@dg.asset(
    deps=["entity_index", "mention_features", "mentions"],
    group_name=GROUP,
    kinds={"faiss", "parquet"},
    code_version=CANDIDATES_VERSION,
    description="Top-K KB indices and scores per mention (every split, nil included) from the entity index, "
    "with the rank of the gold entity and recall@K per split.",
)
def mention_candidates(context: dg.AssetExecutionContext, lake: LakeResource,
                       index: IndexResource) -> dg.MaterializeResult:
    with user_errors():
        report = find_mention_candidates(lake.lake(), index.settings(), logger=context.log)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint),
        metadata={
            **candidates_metadata(report, "recall@K per split"),
            "recall": dg.MetadataValue.md(markdown_table(recall_rows(report.stats["recall"]))),
        },
    )


def candidates_metadata(report: CandidatesReport, plot_title: str) -> dict:
    """What every candidates asset shows: the table, recall per split (numbers and a plot), the search."""
    stats = report.stats
    return {
        **table_metadata(report.table, ["mention_id", "split", "gold_index", "gold_rank", "candidates", "problem"]),
        **recall_metadata(stats["recall"]),
        "recall_plot": dg.MetadataValue.md(png_markdown(recall_curve_png(report.curves, stats["k"]), plot_title)),
        "k": stats["k"],
        "nprobe": stats["nprobe"] or 0,
        "index_kind": stats["index_kind"],
        "device": stats["device"],
        "queries_per_second": stats["queries_per_second"],
        "search_seconds": stats["search_seconds"],
        "mentions_with_problems": sum(stats["problems"].values()),
        "problems": dg.MetadataValue.md(markdown_table(
            [{"problem": problem, "mentions": count} for problem, count in stats["problems"].items()])),
        "mentions_with_fewer_than_k": stats["fewer_than_k"],
        "reused_stored_output": report.reused,
        "fingerprint": report.fingerprint,
    }


def recall_metadata(recall: dict[str, dict]) -> dict:
    """One number per split and cutoff (`recall@10/test`), which Dagster plots over runs."""
    return {f"{name}/{split}": value for split, row in recall.items()
            for name, value in row.items() if name.startswith("recall@") and value is not None}


def recall_rows(recall: dict[str, dict]) -> list[dict]:
    return [{"split": split, **{name: (f"{value:.4f}" if isinstance(value, float) else value)
                                for name, value in row.items()}} for split, row in recall.items()]


@dg.asset_check(
    asset=entity_index,
    additional_deps=["entity_features", "mention_features"],  # in a run of all three, check after all three
    blocking=True,
    description="The entity index and the entity and mention features come from the same encoder (identity "
    "and dimension), and the index holds every usable entity of the store with its current vectors.",
)
def index_matches_features(lake: LakeResource) -> dg.AssetCheckResult:
    store = lake.lake()
    try:
        index = EntityIndex.load(catalog.entity_index_dir(store))
        entities = ItemVectors.from_store(FeatureStore.open(catalog.entity_store_dir(store)))
    except MELUserError as error:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(error))
    mention_store = catalog.mention_store_dir(store)
    try:
        mentions = ItemVectors.from_store(FeatureStore.open(mention_store))
    except MELUserError:  # not materialized yet: the entity side is still worth checking
        mentions = None
    check = check_index_against_features(index, entities, mentions)
    compared = ("entity and mention features" if mentions is not None
                else f"entity features ({mention_store.name}: none yet)")
    return dg.AssetCheckResult(
        passed=check.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"The index matches the {compared}: one encoder, {check.indexed_entities} of "
                     f"{check.usable_entities} usable entities indexed." if check.passed
                     else "The index does not match the features: " + "; ".join(check.problems) + "."),
        metadata={
            "index_path": dg.MetadataValue.path(str(catalog.entity_index_dir(store))),
            "encoders": dg.MetadataValue.json(check.encoders),
            "dims": dg.MetadataValue.json(check.dims),
            "usable_entities": check.usable_entities,
            "indexed_entities": check.indexed_entities,
            "missing_entities": len(check.missing),
            "outdated_entities": len(check.outdated),
            "extra_entities": len(check.extra),
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in check.problems) or "none"),
        },
    )


@dg.asset_check(
    asset=mention_candidates,
    blocking=True,  # candidates that miss the gold cap linking accuracy: training on them is wasted
    description="recall@100 (recall@K when K < 100) of every split is at least IndexResource.min_recall.",
)
def candidate_recall_floor(lake: LakeResource, index: IndexResource) -> dg.AssetCheckResult:
    store = lake.lake()
    stats = store.table_extra(catalog.MENTION_CANDIDATES)
    floor = recall_floor(stats["recall"], stats["k"], index.min_recall)
    shown = ", ".join(f"{split} {value:.3f}" for split, value in floor.recall.items())
    return dg.AssetCheckResult(
        passed=floor.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"recall@{floor.cutoff} at or above {floor.floor}: {shown}." if floor.passed else
                     f"recall@{floor.cutoff} below the floor {floor.floor} on "
                     f"{', '.join(sorted(floor.below))} ({shown}); see mention_candidates' recall_plot."),
        metadata={
            "cutoff": floor.cutoff,
            "min_recall": float(floor.floor),
            **{f"recall@{floor.cutoff}/{split}": float(value) for split, value in floor.recall.items()},
            "splits_below": ", ".join(sorted(floor.below)) or "none",
            "table": dg.MetadataValue.path(str(store.table_path(catalog.MENTION_CANDIDATES))),
        },
    )
