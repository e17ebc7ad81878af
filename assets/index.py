"""Candidate retrieval assets: the FAISS entity index and the top-K candidates per mention.

The logic lives in `pipeline.index`; this module opens the feature stores, maps resource
settings onto the pipeline and turns its reports into metadata (numbers as numbers, so the
UI plots recall, throughput and sync counts across materializations).
"""

import dagster as dg
from pydantic import Field

from assets.features import ClipResource
from assets.metadata import markdown_table, table_metadata
from assets.resources import LakeResource, user_errors
from pipeline.errors import MELUserError
from pipeline.features import FeatureStore, mention_store_name, store_dir
from pipeline.index import (
    COMBINATION_RULE,
    CandidatesReport,
    EntityIndex,
    IndexReport,
    IndexSettings,
    ItemVectors,
    find_mention_candidates,
    index_dir,
    recall_curves,
    update_entity_index,
)
from pipeline.index.candidates import CANDIDATES_VERSION
from pipeline.index.checks import check_index_against_features, recall_floor
from pipeline.index.faiss_index import INDEX_FORMAT
from pipeline.index.vectors import COMBINATION_VERSION
from pipeline.lake import Lake
from pipeline.plots import png_markdown, recall_curve_png

GROUP = "index"
DEFAULTS = IndexSettings()


def feature_vectors(lake: Lake, store_name: str) -> ItemVectors:
    """The pooled vectors of a feature store (`entity_features`, `mention_features`...), memory-mapped."""
    return ItemVectors.from_store(FeatureStore.open(store_dir(lake, store_name)))


class IndexResource(dg.ConfigurableResource):
    """How the entity index is built and searched."""

    kind: str = Field(default=DEFAULTS.kind, description="'flat' (exact), 'ivf' (approximate), or 'auto': "
                      "flat up to `flat_max_entities` usable entities, IVF past it.")
    flat_max_entities: int = Field(default=DEFAULTS.flat_max_entities,
                                   description="Largest KB that 'auto' indexes exactly.")
    nlist: int = Field(default=DEFAULTS.nlist, description="IVF lists; 0 = about 4*sqrt(entities).")
    nprobe: int = Field(default=DEFAULTS.nprobe, description="IVF lists searched per query (recall vs speed).")
    top_k: int = Field(default=100, description="Candidates kept per mention (clamped to the KB size).")
    use_gpu: str = Field(default=DEFAULTS.use_gpu, description="'auto' (when faiss has GPU support and a GPU "
                         "is present), 'always' (fail without one) or 'never'.")
    min_recall: float = Field(default=0.5, description="Floor of recall@100 (recall@K when K < 100) on every "
                              "split; below it the candidate_recall_floor check fails (the demo reaches 0.8 to 0.9).")

    def settings(self) -> IndexSettings:
        return IndexSettings(kind=self.kind, flat_max_entities=self.flat_max_entities, nlist=self.nlist,
                             nprobe=self.nprobe, use_gpu=self.use_gpu)


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
    store = lake.lake()
    with user_errors():
        settings = index.settings()
        gpu = settings.gpu()  # validates use_gpu before any work
        report = update_entity_index(feature_vectors(store, "entity_features"), index_dir(store), settings,
                                     logger=context.log)
    excluded = [p for p in report.problems if p["action"] == "excluded"]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint),
        metadata={
            **index_metadata(report, gpu),
            "dim": report.dim,
            "index_dim": 2 * report.dim,
            "text_only_entities": len(report.problems) - len(excluded),
            "encoder": dg.MetadataValue.json(report.encoder),
            "combination_rule": COMBINATION_RULE,
        },
    )


def index_metadata(report: IndexReport, gpu: bool) -> dict:
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
        "gpu": gpu,
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
def mention_candidates(context: dg.AssetExecutionContext, lake: LakeResource, index: IndexResource,
                       clip: ClipResource) -> dg.MaterializeResult:
    store = lake.lake()
    with user_errors():
        # The mention store that mention_features writes under the same ClipResource settings.
        mentions = feature_vectors(store, mention_store_name(clip.description_source))
        report = find_mention_candidates(store, EntityIndex.load(index_dir(store)), mentions, index.settings(),
                                         index.top_k, logger=context.log)
    table = store.read_table("mention_candidates")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.fingerprint),
        metadata={
            **candidates_metadata(report, table, store.table_path("mention_candidates"), "recall@K per split"),
            "recall": dg.MetadataValue.md(markdown_table(recall_rows(report.stats["recall"]))),
        },
    )


def candidates_metadata(report: CandidatesReport, table, path, plot_title: str) -> dict:
    """What every candidates asset shows: the table, recall per split (numbers and a plot), the search."""
    stats = report.stats
    return {
        **table_metadata(table, path, ["mention_id", "split", "gold_index", "gold_rank", "candidates", "problem"]),
        **recall_metadata(stats["recall"]),
        "recall_plot": dg.MetadataValue.md(png_markdown(recall_curve_png(recall_curves(table, stats["k"]),
                                                                         stats["k"]), plot_title)),
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
def index_matches_features(lake: LakeResource, clip: ClipResource) -> dg.AssetCheckResult:
    store = lake.lake()
    try:
        index = EntityIndex.load(index_dir(store))
        entities = feature_vectors(store, "entity_features")
    except MELUserError as error:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(error))
    mention_store = mention_store_name(clip.description_source)
    try:
        mentions = feature_vectors(store, mention_store)
    except MELUserError:  # not materialized yet: the entity side is still worth checking
        mentions = None
    check = check_index_against_features(index, entities, mentions)
    compared = ("entity and mention features" if mentions is not None
                else f"entity features ({mention_store}: none yet)")
    return dg.AssetCheckResult(
        passed=check.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"The index matches the {compared}: one encoder, {check.indexed_entities} of "
                     f"{check.usable_entities} usable entities indexed." if check.passed
                     else "The index does not match the features: " + "; ".join(check.problems) + "."),
        metadata={
            "index_path": dg.MetadataValue.path(str(index_dir(store))),
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
    stats = store.table_extra("mention_candidates")
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
            "table": dg.MetadataValue.path(str(store.table_path("mention_candidates"))),
        },
    )
